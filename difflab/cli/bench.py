"""`difflab bench samplers|train|gpu`: benchmarks that print tables (and write them for samplers and gpu)."""
from __future__ import annotations

#: The problems of difflab.bench.samplers.PROBLEMS, named here so that --help needs no torch.
PROBLEMS = ("gmm2d", "gmm64")


def add_parser(sub, parser_class) -> None:
    p = sub.add_parser("bench", help="benchmarks", description="Benchmarks that print tables.")
    bench = p.add_subparsers(dest="bench", metavar="BENCHMARK", required=True, parser_class=parser_class)
    q = bench.add_parser("samplers", help="compare every sampler against exact solutions",
                         description="Run every sampler on exact Gaussian-mixture problems and write "
                         "error tables (CSV, markdown) and plots; see difflab/bench/samplers.py.")
    q.add_argument("--out", default="benchmarks/samplers", help="output directory (CSV, PNG)")
    q.add_argument("--problems", nargs="+", default=list(PROBLEMS), choices=PROBLEMS)
    q.add_argument("--n", type=int, default=1000, help="noises per problem for the ODE samplers")
    q.add_argument("--n-stochastic", type=int, default=4000, help="samples for the stochastic samplers")
    q.add_argument("--no-optimise", action="store_true", help="skip the optimised schedules")
    q.add_argument("--quick", action="store_true", help="small sizes, no optimisation (a smoke run)")
    q.set_defaults(func=run_samplers)

    q = bench.add_parser("train", help="the trainer's images per second against a bare training step",
                         description="Images per second of 'difflab train' against a bare forward + "
                         "backward + optimizer step of the same network, on any device.")
    q.add_argument("--preset", default="digits", metavar="NAME", help="training preset (default: %(default)s)")
    q.add_argument("--data", metavar="PATH", help="data for presets that need it")
    q.add_argument("--device", metavar="DEV", help="cpu, cuda, ... (default: cuda when available)")
    q.add_argument("--steps", type=int, default=50, metavar="N", help="timed steps (default: %(default)s)")
    q.add_argument("--warmup", type=int, default=10, metavar="N", help="untimed steps first (default: %(default)s)")
    q.add_argument("--batch-size", type=int, metavar="B", help="batch size (default: the preset's)")
    q.add_argument("--precision", choices=("fp32", "bf16"), help="(default: the preset's)")
    q.add_argument("--repeats", type=int, default=3, metavar="R", help="alternated runs of each, medians reported "
                   "(default: %(default)s)")
    q.add_argument("--compile", nargs="?", const="default", default="none", metavar="MODE",
                   choices=("none", "default", "reduce-overhead", "max-autotune"), help="torch.compile mode")
    q.set_defaults(func=run_train)

    q = bench.add_parser("gpu", help="training and sampling speed on a GPU against diffusers",
                         description="The cifar10-ddpm network: difflab's trainer and bare step (bf16 and "
                         "fp32, eager and CUDA graphs) and diffusers' UNet2DModel, with MFU; 256 samples "
                         "of 10 DPM-Solver++(2M) steps against a diffusers loop. Needs CUDA (--quick: a "
                         "tiny check on any device).")
    q.add_argument("--out", default="benchmarks/gpu", help="output directory (default: %(default)s)")
    q.add_argument("--device", metavar="DEV", help="default: cuda")
    q.add_argument("--quick", action="store_true", help="tiny sizes on any device: checks the code, not the speed")
    q.add_argument("--no-compile", action="store_true", help="leave out the compiled rows")
    q.set_defaults(func=run_gpu)


def run_samplers(args) -> None:
    from ..bench import samplers
    from .common import check_output, check_positive

    check_positive(n=args.n, n_stochastic=args.n_stochastic)
    check_output(args.out, "--out", folder=True)
    if args.quick:
        args.n, args.n_stochastic, args.no_optimise = 128, 500, True
    samplers.run(args.out, tuple(args.problems), args.n, args.n_stochastic, optimise=not args.no_optimise)


def run_train(args) -> None:
    from ..bench.speed import bench_train
    from ..training.data import torch_device
    from .common import UserError, check_positive

    check_positive(steps=args.steps, warmup=args.warmup, batch_size=args.batch_size, repeats=args.repeats)
    torch_device(args.device)  # an unknown device is a user error before any work
    if args.steps % args.warmup:
        raise UserError("--steps must be a multiple of --warmup (the trainer logs every --warmup steps)")
    bench_train(args.preset, args.device, steps=args.steps, warmup=args.warmup, data=args.data,
                batch_size=args.batch_size, compile=args.compile, precision=args.precision, repeats=args.repeats)


def run_gpu(args) -> None:
    from ..bench.speed import bench_gpu
    from ..training.data import torch_device
    from .common import check_output

    check_output(args.out, "--out", folder=True)
    if args.device is not None:
        torch_device(args.device)  # an unknown device is a user error before any work
    bench_gpu(args.out, args.device, quick=args.quick, compile=not args.no_compile)
