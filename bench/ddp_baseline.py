#!/usr/bin/python3
"""PyTorch DDP baseline for `frugal train`: the same model, data, batch, sampling and thread count.

Stock DistributedDataParallel over gloo (default 25 MiB buckets, overlapped allreduce), so that
bench/compare_ddp.sh can report Frugal's dense throughput against it in the same run.

Launch modes:
  * standalone:  bench/ddp_baseline.py --workers 4 ...  spawns 4 ranks on 127.0.0.1 (free port);
  * torchrun-style: with RANK and WORLD_SIZE (and MASTER_ADDR/MASTER_PORT) in the environment,
    this process runs as that one rank and --workers is ignored.

Timing covers the training loop only: after --warmup-steps steps every rank meets at a barrier and
the clock starts; after the last step a second barrier stops it. samples_per_s counts global samples
(batch_size * world_size * timed_steps). Rank 0 writes the summary JSON to --summary and prints it
as one line on stdout.

Run it with Debian's interpreter (/usr/bin/python3): it has python3-torch.
"""

import argparse
import gzip
import json
import os
import socket
import subprocess
import sys
import time

import numpy as np

FASHION_MNIST_MEAN = 0.2860
FASHION_MNIST_STD = 0.3530
MLP_PARAMETER_COUNT = 5_824_522
CNN_PARAMETER_COUNT = 3_274_634
SYNTHETIC_SAMPLES = 60_000
IMAGE_SIDE = 28
NUM_CLASSES = 10


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("--workers", type=int, default=4, help="ranks to spawn (ignored under torchrun)")
    p.add_argument("--model", choices=["mlp", "cnn"], default="mlp")
    p.add_argument("--dataset", choices=["fashion-mnist", "synthetic"], default="fashion-mnist")
    p.add_argument("--data-dir", default="/usr/share/datasets/fashion-mnist")
    p.add_argument("--batch-size", type=int, default=32, help="samples per worker per step")
    p.add_argument("--steps", type=int, default=0, help="total steps; 0 = run --epochs epochs")
    p.add_argument("--epochs", type=int, default=1)
    p.add_argument("--lr", type=float, default=0.05)
    p.add_argument("--optimizer", choices=["sgd"], default="sgd", help="SGD with momentum 0.9")
    p.add_argument("--momentum", type=float, default=0.9)
    p.add_argument("--seed", type=int, default=1)
    p.add_argument("--threads", type=int, default=1,
                   help="intra-op threads per worker (torch.set_num_threads, OMP_NUM_THREADS); "
                        "0 = leave torch's default")
    p.add_argument("--warmup-steps", type=int, default=5, help="steps run before the clock starts")
    p.add_argument("--summary", default="", help="JSON summary path, written by rank 0")
    p.add_argument("--bucket-cap-mb", type=float, default=25.0, help="DDP bucket size (stock: 25)")
    p.add_argument("--log-every", type=int, default=0,
                   help="rank 0 prints the rank-averaged loss every N steps (0 = never; adds an "
                        "allreduce on those steps, so leave it off when timing)")
    p.add_argument("--eval", action="store_true",
                   help="after training, rank 0 reports test-set accuracy (fashion-mnist only)")
    p.add_argument("--port", type=int, default=0, help="rendezvous port; 0 = pick a free one")
    args = p.parse_args(argv)
    if args.workers < 1:
        p.error(f"--workers must be >= 1, got {args.workers}")
    if args.batch_size < 1:
        p.error(f"--batch-size must be >= 1, got {args.batch_size}")
    if args.steps < 0 or args.epochs < 1 or args.warmup_steps < 0 or args.threads < 0:
        p.error("--steps, --warmup-steps and --threads must be >= 0, --epochs >= 1")
    return args


# ---------------------------------------------------------------------------------------------
# Data

def _read_idx(path, magic, dims_expected):
    """Reads one gzipped IDX file; dims_expected holds the trailing dims (None = any count)."""
    try:
        with gzip.open(path, "rb") as f:
            raw = f.read()
    except FileNotFoundError:
        raise SystemExit(f"ddp_baseline: missing data file {path}")
    except (OSError, EOFError) as e:
        raise SystemExit(f"ddp_baseline: cannot read {path} as gzip: {e}")
    ndim = len(dims_expected)
    header_bytes = 4 + 4 * ndim
    if len(raw) < header_bytes:
        raise SystemExit(f"ddp_baseline: {path}: {len(raw)} bytes, shorter than its IDX header")
    got_magic = int.from_bytes(raw[0:4], "big")
    if got_magic != magic:
        raise SystemExit(f"ddp_baseline: {path}: IDX magic 0x{got_magic:08x}, expected 0x{magic:08x}")
    dims = [int.from_bytes(raw[4 + 4 * i:8 + 4 * i], "big") for i in range(ndim)]
    for i, (got, want) in enumerate(zip(dims, dims_expected)):
        if want is not None and got != want:
            raise SystemExit(f"ddp_baseline: {path}: dimension {i} is {got}, expected {want}")
    payload = int(np.prod(dims))
    if len(raw) - header_bytes != payload:
        raise SystemExit(f"ddp_baseline: {path}: header promises {payload} bytes of data "
                         f"({'x'.join(map(str, dims))}), file holds {len(raw) - header_bytes}")
    return np.frombuffer(raw, dtype=np.uint8, offset=header_bytes).reshape(dims)


def load_fashion_mnist(data_dir, split):
    """Returns (images float32 [N,1,28,28] normalized, labels int64 [N]) as numpy arrays."""
    prefix = "train" if split == "train" else "t10k"
    images = _read_idx(os.path.join(data_dir, f"{prefix}-images-idx3-ubyte.gz"), 0x00000803,
                       [None, IMAGE_SIDE, IMAGE_SIDE])
    labels = _read_idx(os.path.join(data_dir, f"{prefix}-labels-idx1-ubyte.gz"), 0x00000801, [None])
    if images.shape[0] != labels.shape[0]:
        raise SystemExit(f"ddp_baseline: {data_dir}: {images.shape[0]} {prefix} images but "
                         f"{labels.shape[0]} labels")
    if labels.max() >= NUM_CLASSES:
        raise SystemExit(f"ddp_baseline: {data_dir}: {prefix} label {labels.max()} out of range")
    x = images.astype(np.float32) / 255.0
    x = (x - FASHION_MNIST_MEAN) / FASHION_MNIST_STD
    return x.reshape(-1, 1, IMAGE_SIDE, IMAGE_SIDE), labels.astype(np.int64)


def make_synthetic(seed):
    rng = np.random.default_rng(seed)
    x = rng.standard_normal((SYNTHETIC_SAMPLES, 1, IMAGE_SIDE, IMAGE_SIDE), dtype=np.float32)
    y = rng.integers(0, NUM_CLASSES, size=SYNTHETIC_SAMPLES, dtype=np.int64)
    return x, y


def shard_indices(torch, n, rank, world, seed, epoch):
    """DistributedSampler(shuffle=True, drop_last=True) semantics, without the DataLoader."""
    g = torch.Generator()
    g.manual_seed(seed + epoch)
    order = torch.randperm(n, generator=g)
    per_rank = n // world  # == ceil((n - world) / world) when n % world != 0: drop_last=True
    return order[rank:per_rank * world:world]


# ---------------------------------------------------------------------------------------------
# Model

def build_model(torch, name):
    nn = torch.nn
    if name == "mlp":
        model = nn.Sequential(nn.Flatten(), nn.Linear(784, 2048), nn.ReLU(),
                              nn.Linear(2048, 2048), nn.ReLU(), nn.Linear(2048, 10))
        expected = MLP_PARAMETER_COUNT
    else:
        model = nn.Sequential(nn.Conv2d(1, 32, 5, padding=2), nn.ReLU(), nn.MaxPool2d(2),
                              nn.Conv2d(32, 64, 5, padding=2), nn.ReLU(), nn.MaxPool2d(2),
                              nn.Flatten(), nn.Linear(64 * 7 * 7, 1024), nn.ReLU(),
                              nn.Linear(1024, 10))
        expected = CNN_PARAMETER_COUNT
    count = sum(p.numel() for p in model.parameters())
    assert count == expected, f"{name}: {count} parameters, expected {expected}"
    return model, count


# ---------------------------------------------------------------------------------------------
# One rank

def run_rank(args, rank, world):
    if args.threads > 0:
        os.environ["OMP_NUM_THREADS"] = str(args.threads)
    import torch
    import torch.distributed as dist
    from torch.nn.parallel import DistributedDataParallel as DDP

    if args.threads > 0:
        torch.set_num_threads(args.threads)
    dist.init_process_group("gloo", rank=rank, world_size=world)

    if args.dataset == "fashion-mnist":
        x_np, y_np = load_fashion_mnist(args.data_dir, "train")
    else:
        x_np, y_np = make_synthetic(args.seed)
    x_all, y_all = torch.from_numpy(x_np), torch.from_numpy(y_np)
    n = x_all.shape[0]

    per_rank = n // world
    steps_per_epoch = per_rank // args.batch_size  # drop the ragged last batch
    if steps_per_epoch == 0:
        raise SystemExit(f"ddp_baseline: {n} samples over {world} workers leave {per_rank} per rank, "
                         f"fewer than --batch-size {args.batch_size}")
    total_steps = args.steps if args.steps > 0 else steps_per_epoch * args.epochs
    if total_steps <= args.warmup_steps:
        raise SystemExit(f"ddp_baseline: {total_steps} steps leave nothing to time after "
                         f"--warmup-steps {args.warmup_steps}")

    torch.manual_seed(args.seed)  # identical init on every rank; DDP also broadcasts rank 0's
    model, param_count = build_model(torch, args.model)
    ddp = DDP(model, bucket_cap_mb=args.bucket_cap_mb)
    optimizer = torch.optim.SGD(ddp.parameters(), lr=args.lr, momentum=args.momentum)
    loss_fn = torch.nn.CrossEntropyLoss()

    def step_batches():
        epoch = 0
        while True:
            idx = shard_indices(torch, n, rank, world, args.seed, epoch)
            for s in range(steps_per_epoch):
                yield idx[s * args.batch_size:(s + 1) * args.batch_size]
            epoch += 1

    def mean_over_ranks(value):
        t = torch.tensor([value], dtype=torch.float64)
        dist.all_reduce(t)
        return t.item() / world

    batches = step_batches()
    first_loss = None
    loss = None
    start = None
    for step in range(total_steps):
        if step == args.warmup_steps:
            dist.barrier()
            start = time.perf_counter()
        b = next(batches)
        xb, yb = x_all.index_select(0, b), y_all.index_select(0, b)
        optimizer.zero_grad(set_to_none=True)
        loss = loss_fn(ddp(xb), yb)
        loss.backward()  # DDP allreduces its buckets here, overlapped with the backward pass
        optimizer.step()
        if step == 0:
            first_loss = loss.item()
        if args.log_every and (step + 1) % args.log_every == 0:
            avg = mean_over_ranks(loss.item())
            if rank == 0:
                print(f"step {step + 1}/{total_steps} loss {avg:.4f}", file=sys.stderr, flush=True)
    dist.barrier()
    seconds = time.perf_counter() - start

    timed_steps = total_steps - args.warmup_steps
    final_loss = mean_over_ranks(loss.item())
    first_loss = mean_over_ranks(first_loss)

    test_accuracy = None
    if args.eval and args.dataset == "fashion-mnist" and rank == 0:
        tx, ty = load_fashion_mnist(args.data_dir, "test")
        model.eval()
        with torch.no_grad():
            pred = model(torch.from_numpy(tx)).argmax(dim=1)
        test_accuracy = (pred == torch.from_numpy(ty)).double().mean().item()

    if rank == 0:
        summary = {
            "system": "pytorch-ddp",
            "model": args.model,
            "dataset": args.dataset,
            "workers": world,
            "batch_size": args.batch_size,
            "threads": args.threads if args.threads > 0 else torch.get_num_threads(),
            "steps": total_steps,
            "warmup_steps": args.warmup_steps,
            "timed_steps": timed_steps,
            "samples_per_s": args.batch_size * world * timed_steps / seconds,
            "steps_per_s": timed_steps / seconds,
            "wall_s": seconds,
            "first_loss": first_loss,
            "final_loss": final_loss,
            "parameters": param_count,
            "lr": args.lr,
            "bucket_cap_mb": args.bucket_cap_mb,
            "backend": "gloo",
            "torch_version": torch.__version__,
        }
        if test_accuracy is not None:
            summary["test_accuracy"] = test_accuracy
        line = json.dumps(summary)
        if args.summary:
            with open(args.summary, "w") as f:
                f.write(line + "\n")
        print(line, flush=True)
    dist.barrier()
    # torch 1.13 can deadlock at interpreter exit: ~Reducer drops the last reference to
    # ProcessGroupGloo, whose destructor joins a worker thread that is waiting for the GIL the
    # exiting main thread holds. Everything is written and every rank is past the barrier.
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(0)


# ---------------------------------------------------------------------------------------------
# Launcher

def free_port():
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def spawn(args, argv):
    """Starts --workers copies of this script, each as one torchrun-style rank; waits for all."""
    port = args.port or free_port()
    procs = []
    for rank in range(args.workers):
        env = dict(os.environ, RANK=str(rank), WORLD_SIZE=str(args.workers),
                   LOCAL_RANK=str(rank), MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
        if args.threads > 0:
            env["OMP_NUM_THREADS"] = str(args.threads)
        procs.append(subprocess.Popen([sys.executable, os.path.abspath(__file__)] + argv, env=env))
    failed = []
    # A dead rank leaves the others blocked in a collective: once one fails, stop the rest.
    remaining = list(enumerate(procs))
    while remaining:
        for item in list(remaining):
            rank, proc = item
            rc = proc.poll()
            if rc is None:
                continue
            remaining.remove(item)
            if rc != 0:
                failed.append((rank, rc))
                for _, other in remaining:
                    other.terminate()
        time.sleep(0.05)
    if failed:
        ranks = ", ".join(f"rank {r} exit {c}" for r, c in failed)
        raise SystemExit(f"ddp_baseline: worker failure: {ranks}")


def main():
    argv = sys.argv[1:]
    args = parse_args(argv)
    if "RANK" in os.environ and "WORLD_SIZE" in os.environ:
        os.environ.setdefault("MASTER_ADDR", "127.0.0.1")
        if "MASTER_PORT" not in os.environ:
            raise SystemExit("ddp_baseline: RANK and WORLD_SIZE are set but MASTER_PORT is not")
        run_rank(args, int(os.environ["RANK"]), int(os.environ["WORLD_SIZE"]))
    else:
        # Catch the mistakes every rank would make before starting any, so each is reported once.
        if args.steps and args.steps <= args.warmup_steps:
            raise SystemExit(f"ddp_baseline: --steps {args.steps} leaves nothing to time after "
                             f"--warmup-steps {args.warmup_steps}")
        if args.dataset == "fashion-mnist":
            load_fashion_mnist(args.data_dir, "train")  # validates magic, sizes and labels
        spawn(args, argv)


if __name__ == "__main__":
    main()
