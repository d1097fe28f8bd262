"""Smoke tests of the benchmark scripts: each runs on tiny shapes and writes well-formed JSON.

No timing is asserted (timings depend on the machine); the tests check the files' structure,
that every implementation computed the same thing as the baseline (max_abs_diff), that the
memory method sees a known allocation, and that the README section is built from the files.
"""

import json
import sys
from pathlib import Path

import pytest
import torch

BENCH = Path(__file__).resolve().parents[1] / "benchmarks"
sys.path.insert(0, str(BENCH))

import common  # noqa: E402

FAST = ["--min-run-time", "0.005", "--rounds", "1", "--no-progress", "--threads", "1"]


def _stats_ok(s):
    assert set(s) >= {"median_s", "iqr_s", "min_s", "n"}
    assert s["median_s"] > 0 and s["iqr_s"] >= 0 and s["n"] >= 1


def _machine_ok(doc, device="cpu"):
    assert doc["schema"] == common.SCHEMA and doc["device"] == device
    m = doc["machine"]
    for k in ("date_utc", "cpu", "torch", "torch_threads", "load_average", "rnn_ext"):
        assert k in m, k
    assert m["torch"] == torch.__version__


def test_peak_memory_sees_a_known_allocation():
    n = 1 << 20  # 4 MiB of float32

    def step():
        a = torch.empty(n)
        b = torch.empty(n // 2)
        del a
        c = torch.empty(n // 4)
        return b, c

    peak = common.peak_memory_bytes(step, "cpu")
    # a and b live together: 6 MiB; after a is freed b + c = 3 MiB.
    assert 6 * 2**20 <= peak < 6 * 2**20 + 4096


def test_stats():
    s = common.stats([1.0, 2.0, 3.0, 4.0, 100.0])
    assert s["median_s"] == 3.0 and s["min_s"] == 1.0 and s["n"] == 5
    assert s["iqr_s"] == pytest.approx(2.0)


def test_bench_rnn_quick(tmp_path):
    import bench_rnn

    out = tmp_path / "bench_rnn_cpu.json"
    bench_rnn.main(["--quick", "--shape", "4,2,3,5", "--shape", "3,2,3,5,2,bi",
                    "--out", str(out), *FAST])
    doc = json.loads(out.read_text())
    _machine_ok(doc)
    assert doc["script"] == "bench_rnn"
    rows = doc["results"]
    assert [(r["impl"], r["layers"], r["bidirectional"]) for r in rows] == [
        ("torch", 1, False), ("rnn_ext", 1, False), ("torch", 2, True), ("rnn_ext", 2, True)]
    for r in rows:
        assert "error" not in r, r.get("error")
        _stats_ok(r["forward"])
        _stats_ok(r["fwd_bwd"])
        assert r["peak_memory_bytes"] > 0
        assert r["max_abs_diff_output"] < 1e-5 and r["max_abs_diff_grad"] < 1e-5
        assert r["speedup_fwd_bwd"] > 0
    assert rows[0]["speedup_forward"] == 1.0 and rows[0]["memory_ratio"] == 1.0
    assert "peak_memory" in doc["methods"]


def test_bench_rnn_targets_and_floor():
    import bench_rnn

    shape = bench_rnn.Shape("lesson", 8, 512, 42, 256)
    assert bench_rnn.CPU_TARGETS[shape.key] == 1.3
    fl = bench_rnn.gpu_floor("NVIDIA H200", shape, torch.float32, tf32=False)
    # 2*B*H^2 / 67 TFLOP/s = 1.0 us for B 512, H 256: about the barrier
    assert fl["step_s"] == pytest.approx(max(1e-6, 2 * 512 * 256**2 / 67e12))
    assert fl["fwd_bwd_s"] > fl["forward_s"] > 8 * fl["step_s"]
    assert bench_rnn.gpu_floor("Some Other GPU", shape, torch.float32, False) is None


def test_bench_rnn_table_when_the_baseline_failed(capsys):
    # the baseline row has an error and no times: the others' speed-ups print as "-" (the table
    # raised KeyError after the JSON was written, so the suite counted the script as failed)
    import bench_rnn

    times = {"forward": {"median_s": 1e-3}, "fwd_bwd": {"median_s": 2e-3}}
    bench_rnn.print_table([
        dict(label="T8 B512", dtype="float32", tf32=False, impl="nn.RNN", error="cuDNN failed"),
        dict(label="T8 B512", dtype="float32", tf32=False, impl="rnn_ext",
             peak_memory_bytes=2**20, **times)])
    rows = capsys.readouterr().out.splitlines()
    assert "cuDNN failed" in rows[1]
    assert rows[2].split()[-4:] == ["-", "-", "1.0", "MiB"]
    assert common.fmt_ratio(1.234) == "1.23" and common.fmt_ratio(None) == "-"


def test_bench_loss_quick(tmp_path):
    import bench_loss

    out = tmp_path / "bench_loss_cpu.json"
    bench_loss.main(["--quick", "--shape", "3,2,5", "--out", str(out), *FAST])
    doc = json.loads(out.read_text())
    _machine_ok(doc)
    impls = [r["impl"] for r in doc["results"]]
    assert impls == ["lesson_nll", "seq_nll_loss", "cross_entropy", "lesson_log_softmax_nll",
                     "seq_cross_entropy"]
    for r in doc["results"]:
        if "skipped" in r:
            assert r["impl"].startswith("seq_")
            continue
        assert "error" not in r, r.get("error")
        _stats_ok(r["fwd_bwd"])
        assert r["max_abs_diff_loss"] < 1e-5 and r["max_abs_diff_grad"] < 1e-5


def test_bench_train_quick(tmp_path):
    import bench_train

    out = tmp_path / "bench_train_cpu.json"
    bench_train.main(["--quick", "--text-chars", "3000", "--bs", "32", "--n-fac", "4",
                      "--n-hidden", "8", "--out", str(out), *FAST])
    doc = json.loads(out.read_text())
    _machine_ok(doc)
    try:
        import rnn_ext.lesson  # noqa: F401
    except ImportError:
        assert doc["results"] == [] and "rnn_ext.lesson" in doc["settings"]["skipped"]
        return
    rows = doc["results"]
    assert [(r["model"], r["impl"]) for r in rows] == [
        ("CharRnn", "torch"), ("CharRnn", "rnn_ext"),
        ("CharSeqRnn", "torch"), ("CharSeqRnn", "rnn_ext")]
    for r in rows:
        _stats_ok(r["step"])
        assert r["chars_per_s"] > 0 and r["peak_memory_bytes"] > 0
        # same initial weights and first batch: the same first loss
        assert r["first_loss_diff"] < 1e-4


def _fake_results(tmp_path, monkeypatch):
    """A results directory holding one small, non-quick bench_rnn file whose shape has a
    target (a stand-in for the operator issue's shapes, which take longer)."""
    import bench_rnn

    monkeypatch.setattr(bench_rnn, "CPU_TARGETS", {(4, 3, 3, 5, 1, False): 1.3})
    res = tmp_path / "results"
    out = res / "bench_rnn_cpu.json"
    bench_rnn.main(["--shape", "4,3,3,5", "--out", str(out), *FAST])
    return res


def test_render_readme_and_plots(tmp_path, monkeypatch):
    import render_readme

    res = _fake_results(tmp_path, monkeypatch)
    readme = tmp_path / "README.md"
    readme.write_text("# x\n\n## Performance\n\n<!-- perf:start -->\nold\n"
                      "<!-- perf:end -->\ntail\n")
    assert render_readme.main(["--readme", str(readme), "--results", str(res)]) == 0
    text = readme.read_text()
    assert "old" not in text and text.endswith("<!-- perf:end -->\ntail\n")
    doc = json.loads((res / "bench_rnn_cpu.json").read_text())
    ours = [r for r in doc["results"] if r["impl"] == "rnn_ext"][0]
    # the speed-up in the README is the file's, and the target column is there
    assert f"{ours['speedup_fwd_bwd']:.2f}x" in text
    assert "≥ 1.3x" in text and ours["target"]["speedup_fwd_bwd_min"] == 1.3
    assert isinstance(ours["meets_target"], bool)
    assert render_readme.main(["--readme", str(readme), "--results", str(res), "--check"]) == 0
    readme.write_text(text.replace("T4 B3", "T9 B3"))
    assert render_readme.main(["--readme", str(readme), "--results", str(res), "--check"]) == 1
    readme.write_text("no markers\n")
    with pytest.raises(SystemExit):
        render_readme.main(["--readme", str(readme), "--results", str(res)])

    pytest.importorskip("matplotlib")
    import plot_results

    pngs = plot_results.main([str(res / "bench_rnn_cpu.json"), "--outdir", str(tmp_path)])
    assert [p.name for p in pngs] == ["bench_rnn_cpu.png"]
    assert pngs[0].read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_cuda_sanitize_cases_on_cpu(capsys, monkeypatch):
    """The compute-sanitizer driver of device_check.sh runs all its cases (here on the CPU
    kernels, which it checks against float64) and reports each; a broken case fails it."""
    import cuda_sanitize

    monkeypatch.delenv("RNN_EXT_CUDA_PERSISTENT", raising=False)
    assert cuda_sanitize.main(["--device", "cpu", "--dtypes", "float32"]) == 0
    out = capsys.readouterr().out
    assert "cuda_sanitize: 22 cases, 0 failed" in out
    assert out.count("\nok   ") + out.startswith("ok   ") == 22

    # A wrong kernel is caught, even when only one element of its output is off (by a tenth of
    # the output's largest magnitude).
    real = cuda_sanitize.run_and_grads
    calls = []

    def skewed(fn, inputs, grads_out, diff):
        outs, grads = real(fn, inputs, grads_out, diff)
        calls.append(1)
        if len(calls) % 2 == 1:  # the device run (the first of each pair)
            bad = outs[0].clone()
            bad.view(-1)[bad.numel() // 2] += 0.1 * bad.abs().max()
            outs = [bad] + outs[1:]
        return outs, grads

    monkeypatch.setattr(cuda_sanitize, "run_and_grads", skewed)
    assert cuda_sanitize.main(["--device", "cpu", "--dtypes", "float32"]) == 1
    assert "cuda_sanitize: 22 cases, 22 failed" in capsys.readouterr().out


def test_device_check_script_is_valid_bash():
    import subprocess

    for script in ("device_check.sh", "run_gpu_benchmarks.sh", "run_cpu_benchmarks.sh"):
        r = subprocess.run(["bash", "-n", str(BENCH / script)], capture_output=True, text=True)
        assert r.returncode == 0, (script, r.stderr)


def test_bench_cuda_floor_and_table(capsys):
    """bench_cuda.py's per-step floor and table (the GPU run prints it last; a formatting
    error there would lose the device run's summary): rows with a measured and an assumed
    barrier, plans or none, and an error row."""
    import bench_cuda

    B, H = 64, 512
    flops_s = 2.0 * B * H * H / bench_cuda.PEAK_FLOPS["fp32"]
    assert bench_cuda.per_step_floor(B, H, "fp32", barrier_s=0.0) == pytest.approx(flops_s)
    assert bench_cuda.per_step_floor(B, H, "fp32", barrier_s=1.0) == 1.0
    bytes_s = 3.0 * 1 * 8 * 2 / bench_cuda.BANDWIDTH
    assert bench_cuda.per_step_floor(1, 8, "bf16", barrier_s=0.0) == pytest.approx(bytes_s)
    plan = dict(rb=1, rj=2, ks=4, gb=8, gj=8, bt=8, jt=16, nbt=8, njt=32, padded=1, smem=1,
                blocks=256)
    base = dict(T=100, B=B, I=512, H=H, precision="fp32", tf32=False, target_speedup=1.0,
                floor_per_step_s=2e-6)
    rows = [
        dict(base, impl="cudnn", median_s=2e-3, min_s=2e-3, rel_diff_vs_cudnn=0.0,
             per_step_s=1e-5, speedup_vs_cudnn=1.0, barrier_s=1.5e-6, barrier_source="measured",
             plan_forward=plan, plan_backward=dict(plan, blocks=128)),
        dict(base, impl="persist", error="RuntimeError: no plan"),
        dict(base, impl="cublas", median_s=4e-3, min_s=4e-3, rel_diff_vs_cudnn=None,
             per_step_s=2e-5, speedup_vs_cudnn=0.5, barrier_s=1e-6, barrier_source="assumed",
             plan_forward=None, plan_backward=None),
    ]
    assert bench_cuda.per_step_floor(B, H, "fp32", 0.0, peak_flops=1e12) == pytest.approx(
        2.0 * B * H * H / 1e12)
    assert bench_cuda.per_step_floor(1, 8, "bf16", 0.0, bandwidth=1.0) == pytest.approx(48.0)
    bench_cuda.print_table(dict(device="GPU", torch="x", cuda="13.0", cudnn=1, rows=rows,
                                skipped=[dict(shape=[1, 1, 1, 1], precision="bf16")],
                                ceilings=dict(measured=dict(bandwidth=4.2e12, peak_flops={
                                    "fp32": 5.1e13, "bf16": 7.0e14}))))
    out = capsys.readouterr().out.splitlines()
    cudnn = next(line for line in out if " cudnn " in line)
    assert cudnn.split()[-2:] == ["1.50", "256/128"]
    cublas = next(line for line in out if " cublas " in line)
    assert cublas.split()[-2:] == ["1.00*", "-/-"] and " nan " in f" {cublas} "
    assert any("ERROR RuntimeError: no plan" in line for line in out)
    assert any(line.startswith("skipped (time budget)") for line in out)
    assert "mm TFLOP/s fp32 51, bf16 700; copy 4.20 TB/s" in out[-2]


def _mock_cuda_onto_cpu(monkeypatch, bench_cuda):
    """Run bench_cuda's main flow here: "cuda" tensors and modules made on the CPU, CUDA
    events by the host clock, tiny shapes. Not a measurement: it checks the script's own logic
    (phases, watchdog, JSON, table) before the one device run."""
    import time

    import torch._dynamo  # noqa: F401  (imported lazily by the flow: done here, before the
    import torch.profiler  # noqa: F401  patches, or its import fails half-way under them)

    import rnn_ext

    for name in ("randn", "zeros", "empty", "ones", "tensor"):
        f = getattr(torch, name)

        def wrap(*a, _f=f, **k):
            if str(k.get("device")) == "cuda":
                k["device"] = "cpu"
            return _f(*a, **k)
        monkeypatch.setattr(torch, name, wrap)
    gen = torch.Generator
    monkeypatch.setattr(torch, "Generator", lambda device=None: gen())

    class Event:
        def __init__(self, enable_timing=False):
            self.t = None

        def record(self, stream=None):
            self.t = time.perf_counter()

        def synchronize(self):
            pass

        def elapsed_time(self, other):
            return (other.t - self.t) * 1e3

    monkeypatch.setattr(torch.cuda, "Event", Event)
    monkeypatch.setattr(torch.cuda, "synchronize", lambda *a: None)
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "get_device_name", lambda *a: "mock GPU")
    module_to = torch.nn.Module.to
    monkeypatch.setattr(torch.nn.Module, "to",
                        lambda self, dev, dtype=None: module_to(self, "cpu", dtype))
    monkeypatch.setattr(torch.backends.cudnn, "version", lambda: 0)
    monkeypatch.setattr(rnn_ext, "has_cuda_kernels", lambda: True)
    monkeypatch.setattr(bench_cuda, "machine_info", lambda device: dict(mock=True))
    monkeypatch.setattr(bench_cuda, "SHAPES", [(6, 3, 5, 7), (4, 2, 3, 33)])
    ceilings = bench_cuda.measure_ceilings
    monkeypatch.setattr(bench_cuda, "measure_ceilings",
                        lambda: ceilings(n_copy=1 << 12, n_mm=32))
    # No persistent plan on the CPU: the rows record the op's error, as where none fits.
    monkeypatch.setattr(bench_cuda, "plans_and_barrier",
                        lambda B, H, dtype, measure=True: (None, None, None, "mock"))


def test_bench_cuda_main_with_cuda_mocked_onto_the_cpu(monkeypatch, tmp_path, capsys):
    import bench_cuda

    _mock_cuda_onto_cpu(monkeypatch, bench_cuda)
    path = tmp_path / "bench_cuda.json"
    assert bench_cuda.main(["--json", str(path), "--reps", "2", "--warmup", "1"]) == 0
    doc = json.loads(path.read_text())
    keys = [(tuple(s), p) for p in bench_cuda.PRECISIONS for s in bench_cuda.SHAPES]
    got = [((r["T"], r["B"], r["I"], r["H"]), r["precision"], r["impl"]) for r in doc["rows"]]
    assert got == [(s, p, impl) for s, p in keys for impl in ("cudnn", "persist", "cublas")]
    for r in doc["rows"]:
        assert "error" not in r, r
        assert r["median_s"] > 0 and r["op_floor_s"] > 0 and r["median_over_op_floor"] > 0
        assert r["tf32_matmul"] == r["tf32_cudnn"] == (r["precision"] == "fp32-tf32")
        tol = 2e-2 if r["precision"] == "bf16" else 1e-5
        assert r["rel_diff_vs_cudnn"] < tol  # the same math as nn.RNN
    assert set(doc["cudnn_check"]) == set(bench_cuda.PRECISIONS)
    assert doc["skipped"] == [] and "hang" not in doc
    out = capsys.readouterr().out
    assert bench_cuda.main(["--table-from", str(path)]) == 0
    table = capsys.readouterr().out
    assert table.strip() and table.strip() in out


def test_bench_cuda_stops_at_a_hang_and_keeps_the_rows(monkeypatch, tmp_path, capsys):
    """A persistent-kernel call that never finishes: recorded, JSON written, exit 3 at once
    (os._exit: the device is unusable after a hung kernel), every cuDNN / cuBLAS row kept."""
    import os
    import time

    import bench_cuda

    _mock_cuda_onto_cpu(monkeypatch, bench_cuda)
    timed = bench_cuda.time_it

    def time_it(fn, reps, warmup, guard=None):
        if os.environ.get("RNN_EXT_CUDA_PERSISTENT") == "require":
            # A call that hangs (the worker thread is abandoned; it ends by itself).
            slow = fn

            def fn():
                time.sleep(3)
                return slow()
        return timed(fn, reps, warmup, guard)

    def exit_now(code):
        raise SystemExit(code)

    monkeypatch.setattr(bench_cuda, "time_it", time_it)
    monkeypatch.setattr(os, "_exit", exit_now)
    path = tmp_path / "bench_cuda.json"
    with pytest.raises(SystemExit) as e:
        bench_cuda.main(["--json", str(path), "--reps", "1", "--warmup", "1",
                         "--call-timeout", "0.25"])
    assert e.value.code == 3
    doc = json.loads(path.read_text())
    assert "did not finish within" in doc["hang"]
    impls = [r["impl"] for r in doc["rows"]]
    assert impls.count("cudnn") == impls.count("cublas") == 3 * len(bench_cuda.SHAPES)
    persist = [r for r in doc["rows"] if r["impl"] == "persist"]
    assert len(persist) == 1 and persist[0]["error"].startswith("hang: ")
    assert "STOPPED: " in capsys.readouterr().out


def test_help_shows_each_default_once():
    """--help appends argparse's "(default: X)" only where the text does not already give the
    default, and never "(default: None)" / "(default: False)"."""
    p = common.base_parser("x")
    text = " ".join(p.format_help().split())
    assert "(default: cpu)" in text  # --device: appended
    assert "(default: None)" not in text and "(default: False)" not in text
    assert text.count("default: torch.get_num_threads()") == 1  # --threads: its own text only
