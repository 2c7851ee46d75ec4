"""kdprune's benchmarks: the numbers behind every default, run from the repo root as ``python -m bench.<name>``.

What a script measured is data: ``bench/results/<topic>/<name>.json`` (``bench.common.RESULTS``), named by the
settings that tell the files of a topic apart (``gradual_vs_oneshot/<data>-<imgsz>-kd<0|1>-<arm>-s<seeds>.json``).
bench/RESULTS.md holds the tables read from them, in date order; its first section says which stand for today's
defaults. Run dirs go to ``bench/runs/`` (not tracked); finished runs are read back, interrupted ones resume.

| topic (bench/results/) | scripts |
|---|---|
| canary | canary (``make canary``) |
| deploy | deploy_kit |
| device | device, arena_budget |
| device_fit | device_fit |
| estimators | int8_size, arena_estimate |
| finetune_start | finetune_start |
| gradual_vs_oneshot | gradual_vs_oneshot, confirm_256.sh; pair reads them |
| quant | quant_int8, quant_tflite, file_vs_graph_noise |
| sensitivity | sensitivity_vs_uniform |
| throughput | train_throughput (``make bench``) |
| yolo26 | yolo26 |

Scripts that print their table (a file only where ``--out`` / ``--save`` names one): distill_losses, kd_overhead,
pipeline_fingerprint, prune_importance, refactor_check, rescore_tflite, step_time, tflm_diff, time_to_error,
ultralytics_baseline. Shared code: common; qat_graph is a training callback (``+callbacks.qat_graph._target_=...``)."""
