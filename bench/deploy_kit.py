"""Issue 37's benchmark: the deploy kit of the MCX N947 default file, in one run.

    .venv/bin/python -m bench.deploy_kit [RUN_DIR ...] [--out JSON]

RUN_DIR: finished runs with a TFLite INT8 file (default: the three seeds of the MCX N947 default in
bench/runs/device_fit/, issue 35's ``relu_192`` arm). For each: the kit written (``write_kit``, conf 0.25) and
checked on every val image in TensorFlow Lite Micro (``kdprune.deploy.check``): the C detections against the decode
that scored the file, the mAP50-95 computed from them against the report's TFLite INT8 row, the anchors the int8
threshold skips at the device's conf, host ms per frame of the C code against the Python decode + NMS. Then the
post-processing cross-compiled for the first user's core (Cortex-M33 with its single-precision FPU, as on the MCX
N947; Debian: gcc-arm-none-eabi, libnewlib-arm-none-eabi) at -Os: .text/.rodata/.data/.bss of the object, the
stack each function needs (-fstack-usage), the bytes it adds to a linked firmware with newlib-nano's expf, and the
model's C array placed in its section. Writes bench/results/deploy/mcxn947.json (``--out``).
"""

from __future__ import annotations

import argparse
import json
import re
import shutil
import subprocess
import tempfile
from pathlib import Path

from bench.common import RESULTS, ROOT, git_rev, machine

M33 = ["-mcpu=cortex-m33", "-mthumb", "-mfloat-abi=hard", "-mfpu=fpv5-sp-d16"]
# -Wdouble-promotion: a double on the M33 is software floating point; the library must not use one
STRICT = ["-std=c99", "-Wall", "-Wextra", "-Werror", "-pedantic", "-Wdouble-promotion"]
DEFAULT_RUNS = [ROOT / "bench" / "runs" / "device_fit" / f"relu_192-shapes-s{s}" for s in range(3)]

MAIN = """#include "kdp_postprocess.h"
static int8_t box[8 * 8 * 64], cls[8 * 8 * 8];
static kdp_det_t scratch[64], out[16];
int main(void) {
  kdp_level_t lv = {box, cls, 8, 8, 8.0f, 0.1f, 0, 0.1f, 0};
  kdp_config_t cfg = {8, 16, 1, 0.25f, 0.7f, 16, 0};
  return CALL;
}
"""


def sizes(obj: Path) -> dict:
    out = subprocess.run(["arm-none-eabi-size", "-A", str(obj)], check=True, capture_output=True, text=True).stdout
    got = {m.group(1): int(m.group(2)) for m in re.finditer(r"^(\.[\w.]+)\s+(\d+)", out, re.M)}
    return {k: sum(v for s, v in got.items() if s == k or s.startswith(k + ".")) for k in
            (".text", ".rodata", ".data", ".bss")}


def cortex_m33(kit: Path, work: Path) -> dict:
    """The library and the model array built for the Cortex-M33 at -Os."""
    if shutil.which("arm-none-eabi-gcc") is None:
        return {"skipped": "arm-none-eabi-gcc not installed (Debian: gcc-arm-none-eabi libnewlib-arm-none-eabi)"}
    gcc = ["arm-none-eabi-gcc", *M33, "-Os"]
    obj = work / "kdp_postprocess.o"
    subprocess.run([*gcc, *STRICT, "-fstack-usage", "-ffunction-sections", "-c", str(kit / "kdp_postprocess.c"),
                    "-o", str(obj)], check=True, cwd=work)
    stack = {ln.split()[0].rsplit(":", 1)[-1]: int(ln.split()[1]) for ln in
             (work / "kdp_postprocess.su").read_text().splitlines()}
    undefined = subprocess.run(["arm-none-eabi-nm", "-u", str(obj)], check=True, capture_output=True,
                               text=True).stdout.split()[1::2]
    linked = {}
    for name, call in (("without", "(int)lv.h + cfg.nc + (int)scratch[0].cls + (int)out[0].cls"),
                       ("with", "kdp_postprocess(&cfg, &lv, scratch, 64, out, 0)")):
        (work / f"m_{name}.c").write_text(MAIN.replace("CALL", call))
        elf = work / f"m_{name}.elf"
        subprocess.run([*gcc, "-std=c99", f"-I{kit}", "--specs=nano.specs", "--specs=nosys.specs",
                        "-Wl,--gc-sections", "-ffunction-sections", str(work / f"m_{name}.c"),
                        str(kit / "kdp_postprocess.c"), "-lm", "-o", str(elf)], check=True, cwd=work)
        linked[name] = sizes(elf)
    data = work / "kdp_model_data.o"
    subprocess.run([*gcc, "-std=c99", "-c", str(kit / "kdp_model_data.c"), "-o", str(data)], check=True)
    sec = subprocess.run(["arm-none-eabi-size", "-A", str(data)], check=True, capture_output=True, text=True).stdout
    model = int(re.search(r"^\.kdp_model\s+(\d+)", sec, re.M).group(1))
    worst = stack["kdp_postprocess"] + max(v for k, v in stack.items() if k != "kdp_postprocess")
    return {"flags": " ".join(M33 + ["-Os"]), "object": sizes(obj), "stack_per_function": stack,
            "stack_bound_excl_libm": worst, "undefined": undefined,
            "firmware_added_text": linked["with"][".text"] - linked["without"][".text"],
            "firmware_added_rodata": linked["with"][".rodata"] - linked["without"][".rodata"],
            "model_section_bytes": model}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("runs", nargs="*", type=Path, help="run dirs (default: the MCX N947 default's three seeds)")
    ap.add_argument("--out", type=Path, default=RESULTS / "deploy" / "mcxn947.json")
    a = ap.parse_args()
    from kdprune.deploy.check import check_kit, check_line
    from kdprune.deploy.host import compile_library
    from kdprune.deploy.kit import write_kit

    runs = a.runs or DEFAULT_RUNS
    result = {"machine": machine(), "commit": git_rev(), "runs": {}}
    with tempfile.TemporaryDirectory() as tmp:
        so = compile_library(Path(tmp) / "host")
        for run in runs:
            kit = write_kit(run, conf=0.25, iou=0.7, max_det=300)
            r = check_kit(run, so, conf=0.25, iou=0.7, max_det=300)
            summary = json.loads((run / "summary.json").read_text())
            row = next(x for x in summary["stages"] if x["stage"] == "TFLite INT8")
            r.update(file_bytes=row["bytes"], arena_bytes=row.get("arena_bytes"))
            print(f"{run.name}: {check_line(r)}", flush=True)
            result["runs"][run.name] = r
        work = Path(tmp) / "m33"
        work.mkdir()
        result["cortex_m33"] = cortex_m33(kit, work)
        print("Cortex-M33:", json.dumps(result["cortex_m33"]), flush=True)
    a.out.write_text(json.dumps(result, indent=2))
    print(f"-> {a.out}")


if __name__ == "__main__":
    main()
