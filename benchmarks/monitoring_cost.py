"""What does monitoring cost? Profile at export time, and a report over logs.

1. Export overhead: `export_saved_model` of the quick start's model (the
   small Fashion-MNIST CNN trunk cut at ``features``, heads ``item`` (5
   classes) and ``is_footwear``), with and without ``reference_data`` (the
   quick start's held-out images: the 5,000 test images of its target
   classes, with labels). Exports alternate to even out background load.
   Each round also times the inference pass alone (the exported serving
   function over the same batches of 256): the part of the profile's cost
   no bookkeeping can remove. Wall time is what the target is about; the
   process's CPU time (all threads) is also reported, as it hardly moves
   with other jobs on shared cores.
2. Report time: ``mtk.monitoring.monitor`` over ``--requests`` logged
   requests (one image each, TF Serving's PredictionLog TFRecord format),
   reading the logs and comparing with the profile.

The trunk is randomly initialised (timing does not depend on weight
values); images are the real Fashion-MNIST files when found, random pixels
otherwise. Served input is uint8 (Fashion-MNIST's pixels), as a server
would take it.

    python benchmarks/monitoring_cost.py                 # ~2 minutes on 2 cores
    python benchmarks/monitoring_cost.py --requests 10000 --repeats 3
"""

import argparse
import os
import statistics
import tempfile
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

import keras  # noqa: E402
import numpy as np  # noqa: E402
import tensorflow as tf  # noqa: E402
from tensorflow_serving.apis import model_pb2  # noqa: E402
from tensorflow_serving.apis import predict_pb2  # noqa: E402
from tensorflow_serving.apis import prediction_log_pb2  # noqa: E402

import mtk  # noqa: E402
from mtk.evaluation import format_table  # noqa: E402

TARGET_CLASSES = (5, 6, 7, 8, 9)
FOOTWEAR = (5, 7, 9)


def parse_args():
    parser = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0],
        formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog=__doc__.split("\n\n", 1)[1],
    )
    parser.add_argument("--repeats", type=int, default=5,
                        help="exports with and without profile, and reports")
    parser.add_argument("--requests", type=int, default=100_000,
                        help="logged requests in the report benchmark")
    parser.add_argument("--reference-sizes", type=int, nargs="+",
                        default=[250, 1000, 5000],
                        help="reference data sizes (images) to profile")
    parser.add_argument("--work-dir", default=None,
                        help="where to write exports and logs (default: temp)")
    return parser.parse_args()


def quickstart_model():
    """The quick start's architecture (recipes/quickstart.py), random init."""
    source = mtk.data.quickstart_cnn()
    return mtk.build_multitask_model(
        source,
        trunk_output="features",
        trunk_weights=None,
        heads=[
            mtk.heads.Classification(
                "item", 5,
                class_names=["Sandal", "Shirt", "Sneaker", "Bag", "Ankle boot"],
            ),
            mtk.heads.Binary("is_footwear"),
        ],
    )


def held_out_images():
    """The quick start's held-out set: test images of the target classes."""
    try:
        _, (x, y) = mtk.data.load_fashion_mnist()
        source = "Fashion-MNIST test images of the 5 target classes"
    except Exception:  # no local copy: random pixels, same shape and count
        rng = np.random.default_rng(0)
        x = rng.integers(0, 256, (10000, 28, 28), dtype=np.uint8)
        y = rng.integers(0, 10, 10000)
        source = "random pixels (Fashion-MNIST not found)"
    keep = np.isin(y, TARGET_CLASSES)
    x, y = x[keep][..., None].astype(np.uint8), y[keep]
    labels = {
        "item": np.searchsorted(TARGET_CLASSES, y).astype("int64"),
        "is_footwear": np.isin(y, FOOTWEAR).astype("float32"),
    }
    return x, labels, source


def write_logs(served, path, x, chunk=2000):
    """One PredictionLog per image, as TF Serving logs single requests."""
    spec = model_pb2.ModelSpec(name="quickstart", signature_name="serving_default")
    with tf.io.TFRecordWriter(path) as writer:
        for start in range(0, len(x), chunk):
            batch = x[start:start + chunk]
            outputs = {
                k: v.numpy() for k, v in served.predict(tf.constant(batch)).items()
            }
            for row in range(len(batch)):
                request = predict_pb2.PredictRequest(model_spec=spec)
                request.inputs[served.input_names[0]].CopyFrom(
                    tf.make_tensor_proto(batch[row:row + 1])
                )
                response = predict_pb2.PredictResponse(model_spec=spec)
                for key, value in outputs.items():
                    response.outputs[key].CopyFrom(
                        tf.make_tensor_proto(value[row:row + 1])
                    )
                log = prediction_log_pb2.PredictionLog(
                    predict_log=prediction_log_pb2.PredictLog(
                        request=request, response=response
                    )
                )
                writer.write(log.SerializeToString())


def infer(served, x, batch_size=256):
    """The exported serving function over ``x``, batch by batch."""
    for start in range(0, len(x), batch_size):
        served.predict(tf.constant(x[start:start + batch_size]))


def mean_std(values):
    return (
        statistics.mean(values),
        statistics.stdev(values) if len(values) > 1 else 0.0,
    )


def main():
    args = parse_args()
    work = args.work_dir or tempfile.mkdtemp(prefix="mtk_monitoring_cost_")
    keras.utils.set_random_seed(0)
    model = quickstart_model()
    x, labels, source = held_out_images()
    print(f"reference data: up to {len(x)} {source}", flush=True)
    sizes = sorted({min(n, len(x)) for n in args.reference_sizes})

    def reference(n):
        subset = {k: v[:n] for k, v in labels.items()}
        return tf.data.Dataset.from_tensor_slices((x[:n], subset)).batch(256)

    # Warm up both paths once (first tracing, imports).
    mtk.export_saved_model(model, os.path.join(work, "warmup"), input_dtype="uint8")
    warm = mtk.export_saved_model(
        model, os.path.join(work, "warmup"), input_dtype="uint8",
        reference_data=reference(sizes[0]),
    )
    serving = mtk.monitoring.ServedModel(warm)
    infer(serving, x[:256])
    times = {None: [], **{n: [] for n in sizes}}
    cpu = {None: [], **{n: [] for n in sizes}}
    inference = {n: [] for n in sizes}
    for repeat in range(args.repeats):
        for n in times:
            extra = {} if n is None else {"reference_data": reference(n)}
            start, start_cpu = time.perf_counter(), time.process_time()
            mtk.export_saved_model(
                model, os.path.join(work, f"profile_{n}"), input_dtype="uint8",
                **extra,
            )
            times[n].append(time.perf_counter() - start)
            cpu[n].append(time.process_time() - start_cpu)
        for n in sizes:
            start_cpu = time.process_time()
            infer(serving, x[:n])
            inference[n].append(time.process_time() - start_cpu)
        print(f"export round {repeat + 1}/{args.repeats}: " + ", ".join(
            f"{'no profile' if n is None else f'{n} images'} {t[-1]:.2f} s"
            for n, t in times.items()), flush=True)

    export_dir = os.path.join(work, f"profile_{sizes[-1]}")
    served = mtk.monitoring.ServedModel(export_dir)
    rng = np.random.default_rng(1)
    traffic = x[rng.integers(0, len(x), args.requests)]
    log = os.path.join(work, "requests.log")
    start = time.perf_counter()
    write_logs(served, log, traffic)
    print(f"wrote {args.requests} logged requests "
          f"({os.path.getsize(log) / 1e6:.0f} MB) in "
          f"{time.perf_counter() - start:.0f} s", flush=True)
    reports = []
    for repeat in range(args.repeats):
        start = time.perf_counter()
        report = mtk.monitoring.monitor(export_dir, log)
        reports.append(time.perf_counter() - start)
        print(f"report {repeat + 1}/{args.repeats}: {reports[-1]:.2f} s", flush=True)
    assert report["traffic"]["examples"] == args.requests

    plain = times[None]
    p_mean, p_std = mean_std(plain)
    rows = [{"measure": "export, no profile (s)", "mean": p_mean, "± std": p_std}]
    for n in sizes:
        q_mean, q_std = mean_std(times[n])
        o_mean, o_std = mean_std(
            [100 * (b - a) / a for a, b in zip(plain, times[n])]
        )
        rows.append({"measure": f"export + profile of {n} images (s)",
                     "mean": q_mean, "± std": q_std})
        rows.append({"measure": f"  profile overhead, {n} images (%)",
                     "mean": o_mean, "± std": o_std})
        c_mean, c_std = mean_std(
            [100 * (b - a) / a for a, b in zip(cpu[None], cpu[n])]
        )
        rows.append({"measure": "  profile overhead, CPU time (%)",
                     "mean": c_mean, "± std": c_std})
        i_mean, i_std = mean_std(
            [100 * b / a for a, b in zip(cpu[None], inference[n])]
        )
        rows.append({"measure": "    inference pass alone, CPU time (%)",
                     "mean": i_mean, "± std": i_std})
    r_mean, r_std = mean_std(reports)
    rows += [
        {"measure": f"report over {args.requests} logged requests (s)",
         "mean": r_mean, "± std": r_std},
        {"measure": "report throughput (requests/s)",
         "mean": args.requests / r_mean, "± std": None},
    ]
    print()
    print(format_table(rows, title=(
        f"Monitoring cost, quick start model, {args.repeats} repetitions "
        f"({os.cpu_count()} CPU cores)")))


if __name__ == "__main__":
    main()
