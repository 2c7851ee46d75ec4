/* kdprune post-processing, portable C99: see kdp_postprocess.h. The order of float operations follows the host
 * decode that scored the model (kdprune/export/decode.py: dist2bbox, then xywh -> xyxy in ultralytics' NMS, which
 * offsets each class's boxes by class * 7680 px before torchvision's NMS), so boxes agree to float rounding. */
#include "kdp_postprocess.h"

#include <math.h>

#define KDP_MAX_WH 7680.0f /* ultralytics' per-class offset for class-aware NMS */

static float kdp_sigmoid(float x) { return 1.0f / (1.0f + expf(-x)); }

int kdp_int8_threshold(float scale, int32_t zero_point, float conf) {
    int q;
    for (q = -128; q <= 127; ++q) {
        if (kdp_sigmoid(scale * (float)(q - zero_point)) > conf) return q;
    }
    return 128; /* no int8 value passes */
}

/* total order: score descending, then anchor ascending, then class ascending */
static int kdp_before(const kdp_det_t *a, const kdp_det_t *b) {
    if (a->score != b->score) return a->score > b->score;
    if (a->anchor != b->anchor) return a->anchor < b->anchor;
    return a->cls < b->cls;
}

/* heap sort (in place, no allocation); the heap keeps the *last* element in order at the root */
static void kdp_sift(kdp_det_t *d, int root, int n) {
    for (;;) {
        int child = 2 * root + 1;
        kdp_det_t t;
        if (child >= n) return;
        if (child + 1 < n && kdp_before(&d[child + 1], &d[child])) ++child;
        if (!kdp_before(&d[child], &d[root])) return;
        t = d[root];
        d[root] = d[child];
        d[child] = t;
        root = child;
    }
}

static void kdp_sort(kdp_det_t *d, int n) {
    int i;
    for (i = n / 2 - 1; i >= 0; --i) kdp_sift(d, i, n);
    for (i = n - 1; i > 0; --i) { /* the root is the last in order: move it behind the heap */
        kdp_det_t t = d[0];
        d[0] = d[i];
        d[i] = t;
        kdp_sift(d, 0, i);
    }
    /* a min-heap on kdp_before leaves d in reverse order: reverse */
    for (i = 0; i < n / 2; ++i) {
        kdp_det_t t = d[i];
        d[i] = d[n - 1 - i];
        d[n - 1 - i] = t;
    }
}

/* DFL: the expectation of softmax(logits) over the bins, in grid cells */
static float kdp_dfl(const int8_t *q, int reg_max, float scale, int32_t zp) {
    float m = scale * (float)(q[0] - zp), sum = 0.0f, acc = 0.0f;
    int k;
    if (reg_max == 1) return m;
    for (k = 1; k < reg_max; ++k) {
        float v = scale * (float)(q[k] - zp);
        if (v > m) m = v;
    }
    for (k = 0; k < reg_max; ++k) {
        float e = expf(scale * (float)(q[k] - zp) - m);
        sum += e;
        acc += e * (float)k;
    }
    return acc / sum;
}

static float kdp_iou(const kdp_det_t *a, const kdp_det_t *b) {
    /* as torchvision's NMS computes it, on the class-offset boxes */
    float oa = (float)a->cls * KDP_MAX_WH, ob = (float)b->cls * KDP_MAX_WH;
    float ax1 = a->x1 + oa, ay1 = a->y1 + oa, ax2 = a->x2 + oa, ay2 = a->y2 + oa;
    float bx1 = b->x1 + ob, by1 = b->y1 + ob, bx2 = b->x2 + ob, by2 = b->y2 + ob;
    float w = fminf(ax2, bx2) - fmaxf(ax1, bx1), h = fminf(ay2, by2) - fmaxf(ay1, by1);
    float inter, area_a, area_b;
    if (w <= 0.0f || h <= 0.0f) return 0.0f;
    inter = w * h;
    area_a = (ax2 - ax1) * (ay2 - ay1);
    area_b = (bx2 - bx1) * (by2 - by1);
    return inter / (area_a + area_b - inter);
}

/* One sweep over the levels: the candidates over the int8 threshold into scratch (the best class per anchor, or with
 * all_classes every class over it; with best_only the best class alone), boxes decoded for the survivors only. With
 * cutoff, anchors whose best (score, anchor) comes after it are skipped (the top-k anchors of the end-to-end mode).
 * Returns the candidates written; *decoded counts the anchors over the threshold. */
static int kdp_collect(const kdp_config_t *cfg, const kdp_level_t *levels, kdp_det_t *scratch, int scratch_cap,
                       int all_classes, int best_only, const kdp_det_t *cutoff, int *decoded, int *truncated) {
    int l, n = 0, anchor = 0;
    *decoded = 0;
    for (l = 0; l < cfg->nl; ++l) {
        const kdp_level_t *lv = &levels[l];
        const int q_min = kdp_int8_threshold(lv->cls_scale, lv->cls_zero_point, cfg->conf);
        const int nb = 4 * cfg->reg_max;
        int y, x;
        for (y = 0; y < lv->h; ++y) {
            for (x = 0; x < lv->w; ++x, ++anchor) {
                const int8_t *c = lv->cls + ((size_t)y * lv->w + x) * cfg->nc;
                const int8_t *b = lv->box + ((size_t)y * lv->w + x) * nb;
                int best = 0, k, k_begin, k_end;
                float d[4], ax, ay, x1, y1, x2, y2, cx, cy, w, h;
                kdp_det_t det;
                for (k = 1; k < cfg->nc; ++k)
                    if (c[k] > c[best]) best = k;
                if (c[best] < q_min) continue; /* the int8 threshold: no float work for this anchor */
                det.anchor = anchor;
                if (cutoff) { /* end-to-end: only the top-k anchors by their best score */
                    det.score = kdp_sigmoid(lv->cls_scale * (float)(c[best] - lv->cls_zero_point));
                    det.cls = best;
                    if (kdp_before(cutoff, &det)) continue;
                }
                ++*decoded;
                for (k = 0; k < 4; ++k) d[k] = kdp_dfl(b + k * cfg->reg_max, cfg->reg_max, lv->box_scale,
                                                      lv->box_zero_point);
                ax = (float)x + 0.5f;
                ay = (float)y + 0.5f;
                x1 = ax - d[0];
                y1 = ay - d[1];
                x2 = ax + d[2];
                y2 = ay + d[3];
                if (cfg->end2end) { /* dist2bbox's xyxy, then the stride */
                    det.x1 = x1 * lv->stride;
                    det.y1 = y1 * lv->stride;
                    det.x2 = x2 * lv->stride;
                    det.y2 = y2 * lv->stride;
                } else {
                    cx = (x1 + x2) / 2.0f * lv->stride; /* dist2bbox's xywh, then the stride */
                    cy = (y1 + y2) / 2.0f * lv->stride;
                    w = (x2 - x1) * lv->stride;
                    h = (y2 - y1) * lv->stride;
                    det.x1 = cx - w / 2.0f; /* ultralytics' xywh2xyxy */
                    det.y1 = cy - h / 2.0f;
                    det.x2 = cx + w / 2.0f;
                    det.y2 = cy + h / 2.0f;
                }
                /* the candidates: the best class, or every class over the threshold (in class order, as
                 * ultralytics' torch.where lists them) */
                k_begin = (all_classes && !best_only) ? 0 : best;
                k_end = (all_classes && !best_only) ? cfg->nc : best + 1;
                for (k = k_begin; k < k_end; ++k) {
                    if (c[k] < q_min) continue;
                    det.score = kdp_sigmoid(lv->cls_scale * (float)(c[k] - lv->cls_zero_point));
                    det.cls = k;
                    if (n < scratch_cap) {
                        scratch[n++] = det;
                    } else { /* full: replace the worst candidate if this one is better */
                        int worst = 0, m;
                        *truncated = 1;
                        for (m = 1; m < n; ++m)
                            if (kdp_before(&scratch[worst], &scratch[m])) worst = m;
                        if (kdp_before(&det, &scratch[worst])) scratch[worst] = det;
                    }
                }
            }
        }
    }
    (void)anchor;
    return n;
}

static int kdp_anchors(const kdp_config_t *cfg, const kdp_level_t *levels) {
    int l, a = 0;
    for (l = 0; l < cfg->nl; ++l) a += levels[l].h * levels[l].w;
    return a;
}

int kdp_postprocess(const kdp_config_t *cfg, const kdp_level_t *levels, kdp_det_t *scratch, int scratch_cap,
                    kdp_det_t *out, kdp_stats_t *stats) {
    int n, kept = 0, decoded = 0, truncated = 0, i, j;
    if (!cfg || !levels || !scratch || !out || cfg->nc < 1 || cfg->reg_max < 1 || cfg->nl < 1 || scratch_cap < 1 ||
        !(cfg->conf > 0.0f && cfg->conf < 1.0f) || cfg->max_det < 1)
        return -1;
    if (cfg->end2end) {
        /* ultralytics' Detect.postprocess: the max_det anchors with the best best-class score, then the max_det best
         * (anchor, class) pairs of those (max_det: at most the anchors); thresholded at conf, no NMS. Every class
         * over conf is a pair. */
        const int anchors = kdp_anchors(cfg, levels), k = cfg->max_det < anchors ? cfg->max_det : anchors;
        n = kdp_collect(cfg, levels, scratch, scratch_cap, 1, 0, NULL, &decoded, &truncated);
        if (decoded > k) { /* more anchors over conf than k: find the k-th anchor */
            kdp_det_t cut;
            int all = decoded;
            n = kdp_collect(cfg, levels, scratch, scratch_cap, 0, 1, NULL, &decoded, &truncated);
            kdp_sort(scratch, n);
            cut = scratch[(k < n ? k : n) - 1];
            n = kdp_collect(cfg, levels, scratch, scratch_cap, 1, 0, &cut, &decoded, &truncated);
            decoded = all;
        }
        kdp_sort(scratch, n);
        for (i = 0; i < n && kept < k; ++i) out[kept++] = scratch[i];
    } else {
        n = kdp_collect(cfg, levels, scratch, scratch_cap, cfg->multi_label, 0, NULL, &decoded, &truncated);
        kdp_sort(scratch, n);
        for (i = 0; i < n && kept < cfg->max_det; ++i) { /* greedy class-wise NMS, best first */
            int keep = 1;
            for (j = 0; j < kept; ++j) {
                if (out[j].cls == scratch[i].cls && kdp_iou(&out[j], &scratch[i]) > cfg->iou) {
                    keep = 0;
                    break;
                }
            }
            if (keep) out[kept++] = scratch[i];
        }
    }
    if (stats) {
        stats->anchors = kdp_anchors(cfg, levels);
        stats->candidates = decoded;
        stats->kept = kept;
        stats->truncated = truncated;
    }
    return kept;
}
