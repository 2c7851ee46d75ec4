/* kdprune post-processing: a YOLO detector's int8 outputs -> boxes, in portable C99.
 *
 * The model (a kdprune TFLite INT8 file) returns, per detection level, two NHWC int8 tensors: box (4 * reg_max
 * DFL logits per cell, side-major: left, top, right, bottom) and cls (nc class logits). This library does what the
 * host decode that scored the file does (kdprune.export.decode + ultralytics' NMS):
 *   1. the class threshold in the int8 domain: sigmoid is monotonic, so "score > conf" is "q >= q_min" for one
 *      q_min per level, found once; anchors under it cost one int8 compare per class and no float work;
 *   2. for the survivors only: the DFL expectation of each side, the box, and the sigmoid score of the best class
 *      (or, with multi_label, of every class over the threshold);
 *   3. class-wise NMS (IoU > iou suppresses), best score first, at most max_det boxes; or, for an end-to-end file
 *      (YOLO26's one-to-one head, end2end = 1), no NMS: the max_det anchors with the best class score, then the
 *      max_det best (anchor, class) pairs among them over conf (ultralytics' Detect.postprocess, top-k).
 * No dynamic allocation, no global state; the caller passes the scratch and output arrays; deterministic (ties in
 * score are broken by anchor index, then class).
 */
#ifndef KDP_POSTPROCESS_H
#define KDP_POSTPROCESS_H

#include <stddef.h>
#include <stdint.h>

#ifdef __cplusplus
extern "C" {
#endif

typedef struct {
    const int8_t *box;  /* [h][w][4 * reg_max] */
    const int8_t *cls;  /* [h][w][nc] */
    int h, w;
    float stride;       /* pixels of the network input per cell */
    float box_scale;
    int32_t box_zero_point;
    float cls_scale;
    int32_t cls_zero_point;
} kdp_level_t;

typedef struct {
    int nc;       /* classes */
    int reg_max;  /* DFL bins per side (16 for YOLOv8/YOLO11); 1: the box channels are distances */
    int nl;       /* detection levels */
    float conf;   /* class-score threshold in (0, 1): a box needs score > conf */
    float iou;    /* NMS: a box whose IoU with a better one of its class is > iou is dropped */
    int max_det;  /* at most this many boxes out */
    int multi_label; /* 0: the best class per anchor (ultralytics' predictor: what a device shows); 1: every class
                      * over conf is a candidate (ultralytics' validator: what mAP is computed from); ignored
                      * with end2end, whose (anchor, class) pairs are all candidates */
    int end2end;  /* 0: one-to-many head, NMS; 1: one-to-one head (YOLO26 NMS-free): top-k, boxes as x1y1x2y2
                   * distances (KDP_END2END in kdp_model_io.h says which the file is) */
} kdp_config_t;

typedef struct {
    float x1, y1, x2, y2;  /* pixels of the (letterboxed) network input */
    float score;
    int32_t cls;
    int32_t anchor;        /* anchor index, level by level, row-major (for tie-breaking and debugging) */
} kdp_det_t;

typedef struct {
    int anchors;     /* anchors in all levels */
    int candidates;  /* anchors over the int8 threshold (decoded); the rest cost one int8 compare per class */
    int kept;        /* boxes out (after NMS, or the top-k) */
    int truncated;   /* 1 if candidates exceeded the scratch capacity (the lowest-scoring were dropped) */
} kdp_stats_t;

/* The smallest int8 value q whose score sigmoid(scale * (q - zero_point)) is > conf (128 if none is). */
int kdp_int8_threshold(float scale, int32_t zero_point, float conf);

/* Decode and NMS. scratch: room for scratch_cap candidates; out: room for cfg->max_det boxes. Returns the number of
 * boxes written to out (best first), or -1 for a bad argument. stats may be NULL. */
int kdp_postprocess(const kdp_config_t *cfg, const kdp_level_t *levels, kdp_det_t *scratch, int scratch_cap,
                    kdp_det_t *out, kdp_stats_t *stats);

#ifdef __cplusplus
}
#endif

#endif /* KDP_POSTPROCESS_H */
