"""Tests for the captioned data set shapes-text (difflab.training.data) and the pixel rule that reads
its attributes back (difflab.evaluation.shapes): the caption grammar, exact balance of the 75
combinations, pure colours over black inside the named region, determinism, and the rule's
read-back on the generated images, on hand-made images and on wrong ones."""

import math
import re
from collections import Counter

import pytest
import torch

from difflab.evaluation.shapes import CENTER_RADIUS, parse_caption, prompt_accuracy, read_attributes
from difflab.nets.text import TextConfig, Tokenizer
from difflab.training.data import (
    SHAPES_TEXT_COLORS,
    SHAPES_TEXT_POSITIONS,
    SHAPES_TEXT_SHAPES,
    SHAPES_TEXT_VOCAB,
    DataError,
    _conform,
    load_dataset,
)

pytestmark = pytest.mark.usefixtures("one_thread")

GRAMMAR = re.compile(r"(red|green|blue|yellow|white) (circle|square|triangle) "
                     r"(top left|top right|bottom left|bottom right|center)")


@pytest.fixture(scope="module")
def test_split():
    return load_dataset("shapes-text", split="test")


def _region(position: str, side: int) -> torch.Tensor:
    """(side, side) mask of where a shape at `position` may draw: its quadrant, or the middle half."""
    h = side // 2
    top, left = {"top left": (0, 0), "top right": (0, h), "bottom left": (h, 0), "bottom right": (h, h),
                 "center": (h // 2, h // 2)}[position]
    mask = torch.zeros(side, side, dtype=torch.bool)
    mask[top : top + h, left : left + h] = True
    return mask


def test_constants_and_caption_grammar(test_split):
    assert SHAPES_TEXT_COLORS == {
        "red": (1, 0, 0), "green": (0, 1, 0), "blue": (0, 0, 1), "yellow": (1, 1, 0), "white": (1, 1, 1)
    }
    assert SHAPES_TEXT_SHAPES == ("circle", "square", "triangle")
    assert SHAPES_TEXT_POSITIONS == ("top left", "top right", "bottom left", "bottom right", "center")
    assert SHAPES_TEXT_VOCAB == ("red", "green", "blue", "yellow", "white", "circle", "square", "triangle",
                                 "top", "left", "right", "bottom", "center")
    ds = test_split
    assert ds.name == "shapes-text" and ds.x.shape == (1000, 3, 32, 32) and len(ds.captions) == 1000
    assert all(GRAMMAR.fullmatch(c) for c in ds.captions)
    assert {w for c in ds.captions for w in c.split()} == set(SHAPES_TEXT_VOCAB)
    # The composite label names the caption: y = (color * 3 + shape) * 5 + position.
    assert ds.num_classes == 75 and all(ds.class_names[y] == c for y, c in zip(ds.y.tolist(), ds.captions))
    assert ds.class_names[(3 * 3 + 2) * 5 + 4] == "yellow triangle center"
    # The vocabulary is a text encoder's: every caption tokenizes and decodes back.
    tokenizer = Tokenizer(TextConfig(vocab=SHAPES_TEXT_VOCAB, max_words=4))
    assert tokenizer.decode(tokenizer.encode(ds.captions[:50])) == list(ds.captions[:50])


def test_train_split_balances_all_75_combinations():
    ds = load_dataset("shapes-text")
    counts = Counter(ds.captions)
    assert len(ds) == 10_000 and len(counts) == 5 * 3 * 5
    assert set(counts.values()) == {133, 134}  # 10,000 / 75 = 133.3: balanced exactly
    # Shuffled: the first 75 samples are not one of each combination in order.
    assert list(ds.y[:75]) != list(range(75))


def test_pure_palette_colours_over_black_inside_the_named_region(test_split):
    ds = test_split
    assert ds.x.dtype == torch.float32 and ds.x.min() == -1 and ds.x.max() == 1
    v = (ds.x + 1) / 2
    coverage = v.amax(1, keepdim=True)
    colour = torch.tensor([SHAPES_TEXT_COLORS[c.split()[0]] for c in ds.captions])[:, :, None, None]
    torch.testing.assert_close(v, colour * coverage, atol=1e-6, rtol=0)  # colour x anti-aliased coverage
    inside = torch.stack([_region(" ".join(c.split()[2:]), 32) for c in ds.captions])
    assert (ds.x.amax(1)[~inside] == -1).all()  # outside its quadrant (or middle half) all is black
    # The anti-aliased area in pixels, for r in [4, 6] pixels: pi r^2, 2 r^2 and 3 sqrt(3) / 4 r^2.
    area = coverage.sum((1, 2, 3))
    for shape, k in [("circle", math.pi), ("square", 2), ("triangle", 3 * math.sqrt(3) / 4)]:
        a = area[torch.tensor([c.split()[1] == shape for c in ds.captions])]
        assert k * 16 * 0.98 < a.min() < k * 17 and k * 35 < a.max() < k * 36 * 1.02, shape
    assert ((coverage > 0) & (coverage < 1)).any()  # anti-aliased edges


def test_deterministic_per_seed_and_split_and_captions_survive():
    a = load_dataset("shapes-text", size=200, seed=1)
    b = load_dataset("shapes-text", size=200, seed=1)
    assert torch.equal(a.x, b.x) and torch.equal(a.y, b.y) and a.captions == b.captions
    assert not torch.equal(a.x, load_dataset("shapes-text", size=200, seed=2).x)
    assert not torch.equal(a.x, load_dataset("shapes-text", size=200, seed=1, split="test").x)
    assert a.to("cpu").captions == a.captions and a.info()["captioned"]
    assert _conform(a, 8, None).captions == a.captions
    # Other resolutions are rendered at that size, not resized; channels=3 changes nothing.
    small = load_dataset("shapes-text", size=200, seed=1, resolution=16, channels=3)
    assert small.shape == (3, 16, 16) and small.captions == a.captions
    with pytest.raises(DataError, match="colours"):
        load_dataset("shapes-text", size=10, channels=1)


@pytest.mark.parametrize("resolution, size", [(32, None), (64, 300)])
def test_read_back_recovers_the_captions(resolution, size):
    ds = load_dataset("shapes-text", split="test", size=size, resolution=resolution)
    accuracy = prompt_accuracy(ds.x, ds.captions)
    assert min(accuracy.values()) >= 0.99, accuracy  # measured: 1.0 for every attribute at both sizes
    # Each fill ratio lies near its shape's ideal value (anti-aliasing raises small triangles' most).
    ideal = {"triangle": 0.5, "circle": math.pi / 4, "square": 1.0}
    for r, caption in zip(read_attributes(ds.x), ds.captions):
        assert abs(r["fill"] - ideal[parse_caption(caption)["shape"]]) < 0.17


def test_rule_on_hand_made_images():
    x = -torch.ones(5, 3, 32, 32)
    x[0, 0, 4:12, 20:28] = 1  # a red 8 x 8 square in the top right: fill 1
    yy, xx = torch.meshgrid(torch.arange(32) + 0.5, torch.arange(32) + 0.5, indexing="ij")
    x[1] = torch.where((yy - 16).hypot(xx - 16) < 7, 1.0, -1.0)  # a white disc of radius 7 at the centre
    x[2, :, 20:28, 4:12] = torch.tensor([1, 1, 0.0]).view(3, 1, 1) * 0.8 * 2 - 1  # a dim yellow square
    # 4 x 4 blue squares with centroids (20/32, 14/32) and (23/32, 14/32): 0.140 and 0.228 from the
    # centre, on either side of CENTER_RADIUS = 0.177.
    x[3, 2, 12:16, 18:22] = x[4, 2, 12:16, 21:25] = 1
    r = read_attributes(x)
    assert (r[0]["color"], r[0]["shape"], r[0]["position"]) == ("red", "square", "top right")
    assert r[0]["centroid"] == (0.75, 0.25) and r[0]["fill"] == 1.0
    assert (r[1]["color"], r[1]["shape"], r[1]["position"]) == ("white", "circle", "center")
    assert abs(r[1]["fill"] - math.pi / 4) < 0.03  # a hard-edged disc of 7 pixels
    assert (r[2]["color"], r[2]["shape"], r[2]["position"]) == ("yellow", "square", "bottom left")
    torch.testing.assert_close(torch.tensor(r[2]["rgb"]), torch.tensor([1.0, 1.0, 0.0]))  # un-premultiplied
    assert math.hypot(20 / 32 - 0.5, 14 / 32 - 0.5) < CENTER_RADIUS < math.hypot(23 / 32 - 0.5, 14 / 32 - 0.5)
    assert [r[3]["position"], r[4]["position"]] == ["center", "top right"]


def test_wrong_images_are_caught(test_split):
    ds = test_split
    black = -torch.ones(4, 3, 32, 32)
    assert all(v is None for r in read_attributes(black) for v in r.values())
    assert prompt_accuracy(black, ds.captions[:4]) == {"color": 0, "shape": 0, "position": 0, "all": 0}
    # Red and green swapped: red and green shapes fail on colour alone; yellow, white, blue stay right.
    swapped = ds.x[:, [1, 0, 2]]
    colour = [c.split()[0] for c in ds.captions]
    accuracy = prompt_accuracy(swapped, ds.captions)
    assert accuracy["color"] == pytest.approx(sum(c not in ("red", "green") for c in colour) / len(ds))
    assert accuracy["shape"] == accuracy["position"] == 1
    # Mirrored left to right: only the centred shapes keep their position; the shapes are symmetric.
    mirrored = prompt_accuracy(ds.x.flip(3), ds.captions)
    assert mirrored["position"] == pytest.approx(sum(c.endswith("center") for c in ds.captions) / len(ds))
    assert mirrored["shape"] == mirrored["color"] == 1
    # Upside down, triangles point down and still fill half their bounding box.
    flipped = read_attributes(ds.x[:50].flip(2))
    assert all(r["shape"] == parse_caption(c)["shape"] for r, c in zip(flipped, ds.captions[:50]))


def test_input_errors(test_split):
    x = test_split.x[:2]
    with pytest.raises(ValueError, match="one caption per image"):
        prompt_accuracy(x, ["red circle center"])
    for bad in ("red circle", "pink circle center", "red circle middle", "red circle top left left"):
        with pytest.raises(ValueError, match="<color> <shape> <position>"):
            prompt_accuracy(x, [bad, bad])
    with pytest.raises(ValueError, match="RGB"):
        read_attributes(x[:, :1])
    assert parse_caption("Blue Triangle Bottom Right") == {"color": "blue", "shape": "triangle",
                                                           "position": "bottom right"}
