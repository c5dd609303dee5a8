"""Issue 17: every command given a bad input exits with status 2 and one line naming the problem and
the fix, with no traceback and no partial output (difflab.bench.fuzz builds the corpus). The corpus
runs in this process through difflab.cli.main.main; a handful of cases run through `python -m
difflab`, where exit codes, warnings and tracebacks are the real ones; hypothesis draws bad numeric
options and bad TOML values."""
import math
import string

import pytest

hypothesis = pytest.importorskip("hypothesis")
from hypothesis import given, settings  # noqa: E402
from hypothesis import strategies as st  # noqa: E402

from difflab.bench.fuzz import BAD_COUNTS, bad_inputs, corpus, run_case, summarise, toml_value  # noqa: E402

#: One case per kind of failure, run end to end in a fresh process.
END_TO_END = ("unknown command", "train --config binary", "sample ema_truncated", "forecast --context garbage.npz",
              "train --data corrupt_dir", "edit --input truncated.png")


@pytest.fixture(scope="module")
def workdir(tmp_path_factory):
    return tmp_path_factory.mktemp("fuzz")


@pytest.fixture(scope="module")
def cases(workdir):
    return bad_inputs(workdir)


def test_the_corpus_covers_every_command(cases):
    assert len(cases) >= 200
    assert len({c.name for c in cases}) == len(cases)
    commands = {c.argv[0] for c in cases}
    assert {"train", "sample", "edit", "eval", "forecast", "impute", "info", "reflow", "distill", "train-autoencoder",
            "train-classifier", "bench", "doctor", "demo"} <= commands
    assert {c.argv[1] for c in cases if c.argv[0] == "edit"} >= {"inpaint", "sdedit", "ilvr", "invert", "ddrm", "dps"}


def test_every_bad_input_is_a_one_line_error(cases):
    summary = summarise([run_case(c) for c in cases])
    assert summary["not_clean"] == [], "\n".join(summary["not_clean"])
    assert summary["clean"] == summary["tried"] == len(cases)


@pytest.mark.parametrize("name", END_TO_END)
def test_end_to_end_in_a_fresh_process(cases, name):
    outcome = run_case(next(c for c in cases if c.name == name), in_process=False)
    assert outcome.clean, outcome.describe()


# --- property-based: bad numbers on the command line and in TOML configs ---------------------------

PROPERTY = settings(max_examples=40, deadline=None)


@pytest.fixture(scope="module")
def fresh(workdir, cases):
    """A corpus on the same models for cases drawn by hypothesis."""
    return corpus(workdir)


def _clean(fresh, name, *argv):
    outcome = run_case(fresh.add(name, *argv))
    assert outcome.clean, outcome.describe()


COUNTS = [(prefix, option) for prefix, options in BAD_COUNTS for option in options]


@PROPERTY
@given(st.sampled_from(COUNTS), st.integers(max_value=0))
def test_counts_below_one_are_refused(fresh, count, value):
    prefix, option = count
    _clean(fresh, f"{option} {value}", *prefix, f"{option}={value}")


NOT_FINITE = st.sampled_from([math.nan, math.inf, -math.inf])
#: (command line, option, values it must refuse).
BAD_FLOATS = [
    (("sample", "{cond}", "--n", "2", "--npz", "{out}.npz"), "--guidance", NOT_FINITE),
    (("train", "--preset", "toy2d", "--steps", "1", "--out", "{out}"), "--cond-drop", NOT_FINITE | st.floats(1, 1e9)
     | st.floats(max_value=-1e-9)),
    (("edit", "sdedit", "{digits}", "--from-data", "digits", "--out", "{out}.png"), "--strength",
     NOT_FINITE | st.floats(max_value=0) | st.floats(1 + 1e-9, 1e9)),
    (("edit", "ddrm", "{digits}", "--from-data", "digits", "--out", "{out}.png"), "--sigma-y",
     NOT_FINITE | st.floats(max_value=-1e-9)),
    (("edit", "dps", "{digits}", "--from-data", "digits", "--out", "{out}.png"), "--noise-std",
     NOT_FINITE | st.floats(max_value=-1e-9)),
    (("distill", "guided", "{cond}", "--train-steps", "1", "--out", "{out}"), "--w-max",
     NOT_FINITE | st.floats(-1e9, 0.999)),
    (("train-classifier", "--steps", "1", "--out", "{out}"), "--lr", NOT_FINITE | st.floats(max_value=0)),
]


@PROPERTY
@given(st.data())
def test_bad_float_options_are_refused(fresh, data):
    prefix, option, values = data.draw(st.sampled_from(BAD_FLOATS))
    _clean(fresh, f"{option}", *prefix, f"{option}={data.draw(values)!r}")


AT_LEAST_1 = ("steps", "batch_size", "grad_accum", "log_every", "sample_steps", "keep")
NON_NEGATIVE = ("warmup_steps", "ckpt_every", "sample_every", "seed")
POSITIVE = ("lr", "sigma_data", "P_std", "min_snr_gamma")
UNIT = ("ema_decay", "cond_drop")
NUMBERS = AT_LEAST_1 + NON_NEGATIVE + POSITIVE + UNIT
WORDS = st.text(string.ascii_letters + string.digits + " -_.", max_size=12)
BAD_TOML = st.one_of(
    st.tuples(st.sampled_from(AT_LEAST_1), st.integers(max_value=0)),
    st.tuples(st.sampled_from(NON_NEGATIVE), st.integers(max_value=-1)),
    st.tuples(st.sampled_from(POSITIVE), NOT_FINITE | st.floats(max_value=0) | st.integers(max_value=0)),
    st.tuples(st.sampled_from(UNIT), NOT_FINITE | st.floats().filter(lambda v: not 0 <= v < 1)),
    st.tuples(st.sampled_from(NUMBERS), WORDS | st.booleans() | st.lists(st.integers(), max_size=3)),
    st.tuples(st.sampled_from(("precision", "prediction", "network", "weighting", "sample_sampler")),
              WORDS.filter(lambda w: w not in ("fp32", "bf16", "eps", "x0", "v", "flow", "edm", "mlp", "uniform",
                                               "min_snr"))),
    st.tuples(st.sampled_from(("net.hidden_channels", "net.embed_dim", "net.dim")), st.integers(max_value=0)),
    st.tuples(st.just("net.depth"), st.integers(max_value=-1) | WORDS),
    st.tuples(st.just("net.dropout"), NOT_FINITE | st.floats(1, 1e9) | st.floats(max_value=-1e-9)),
)


@PROPERTY
@given(BAD_TOML)
def test_bad_toml_values_are_refused(fresh, entry):
    key, value = entry
    table, _, name = key.rpartition(".")
    line = f"{name} = {toml_value(value)}"
    path = fresh.files / "drawn.toml"
    path.write_text('preset = "toy2d"\n' + (f"[{table}]\n{line}\n" if table else f"{line}\n"))
    # --steps 1: a TOML value is checked on reading, before the flag applies; were it accepted, one step
    _clean(fresh, f"TOML {key}", "train", "--config", path, "--out", "{out}", "--steps", "1", "--set",
           "sample_every=0", "--device", "cpu")
