"""`difflab bench samplers`: every sampler against exact solutions (:mod:`difflab.bench.samplers`)."""
from __future__ import annotations

#: The problems of difflab.bench.samplers.PROBLEMS, named here so that --help needs no torch.
PROBLEMS = ("gmm2d", "gmm64")


def add_parser(sub, parser_class) -> None:
    p = sub.add_parser("bench", help="benchmarks", description="Benchmarks that write tables and figures.")
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


def run_samplers(args) -> None:
    from ..bench import samplers

    if args.quick:
        args.n, args.n_stochastic, args.no_optimise = 128, 500, True
    samplers.run(args.out, tuple(args.problems), args.n, args.n_stochastic, optimise=not args.no_optimise)
