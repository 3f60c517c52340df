"""course_lib.data on the real MNIST files of ``$COURSE_DATA_DIR``, and DeviceImages and the validation split on
images that carry their own index (so the tests can see which image went where)."""

from __future__ import annotations

import pytest
import torch

from course_lib.data import (VALIDATION_FRACTION, DeviceImages, default_root, load_mnist, to_range, to_unit,
                             validation_split)

pytestmark = pytest.mark.usefixtures("single_thread")


@pytest.fixture(scope="module")
def test_split(mnist_root):
    return load_mnist(train=False, root=mnist_root)


def indexed_images(count: int) -> DeviceImages:
    """``count`` uint8 images whose pixel (0, 0) is the image's index (< 256) and whose label is index % 10."""
    images = torch.zeros(count, 1, 28, 28, dtype=torch.uint8)
    images[:, 0, 0, 0] = torch.arange(count, dtype=torch.uint8)
    return DeviceImages(images, torch.arange(count) % 10, value_range="unit")


def indices_of(batch: torch.Tensor) -> list[int]:
    return (batch[:, 0, 0, 0] * 255).round().long().tolist()


def numbered(count: int, value_range: str = "signed") -> DeviceImages:
    """``count`` tiny uint8 "images" (1 x 1 x 2) holding their index in two bytes; labels are index % 10."""
    index = torch.arange(count)
    images = torch.stack([index // 256, index % 256], dim=1).to(torch.uint8).view(count, 1, 1, 2)
    return DeviceImages(images, index % 10, value_range=value_range)


def numbers_of(data: DeviceImages) -> list[int]:
    pixels = data.images.view(len(data), 2).long()
    return (pixels[:, 0] * 256 + pixels[:, 1]).tolist()


# ----------------------------------------------------------------------------- real MNIST

def test_load_mnist_reads_the_files_of_course_data_dir(mnist_root, monkeypatch):
    monkeypatch.setenv("COURSE_DATA_DIR", str(mnist_root))
    assert default_root() == mnist_root
    test = load_mnist(train=False)
    assert len(test) == 10_000
    image, label = test[0]
    assert image.size == (28, 28) and isinstance(label, int) and 0 <= label <= 9
    train = load_mnist(train=True)
    assert len(train) > 0 and train.data.shape[1:] == (28, 28)
    assert train.data.dtype == torch.uint8 and set(train.targets.tolist()) == set(range(10))


def test_device_images_from_dataset_ranges(test_split):
    unit = DeviceImages.from_dataset(test_split, value_range="unit")
    signed = DeviceImages.from_dataset(test_split, value_range="signed")
    assert len(unit) == 10_000 and unit.device.type == "cpu"
    x_unit, labels = unit.first(8)
    x_signed, _ = signed.first(8)
    assert x_unit.shape == (8, 1, 28, 28) and x_unit.dtype == torch.float32
    assert torch.equal(labels, test_split.targets[:8])
    # MNIST digits are white strokes on black: every image reaches both ends of the range.
    assert x_unit.amin().item() == 0.0 and x_unit.amax().item() == 1.0
    assert x_signed.amin().item() == -1.0 and x_signed.amax().item() == 1.0
    torch.testing.assert_close(x_signed, x_unit * 2 - 1)
    torch.testing.assert_close(x_unit, test_split.data[:8, None].float() / 255)


def test_subset_larger_than_the_split_keeps_the_split(test_split):
    assert len(DeviceImages.from_dataset(test_split, subset_size=20_000)) == 10_000
    with pytest.raises(ValueError, match="`subset_size`"):
        DeviceImages.from_dataset(test_split, subset_size=0)


def test_real_batches_are_the_datasets_images_and_labels(test_split):
    data = DeviceImages.from_dataset(test_split, value_range="unit")
    generator = torch.Generator().manual_seed(0)
    order = torch.randperm(10_000, generator=torch.Generator().manual_seed(0))[:64]
    images, labels = next(data.batches(64, generator))
    assert images.shape == (64, 1, 28, 28) and labels.shape == (64,) and labels.dtype == torch.int64
    torch.testing.assert_close(images, test_split.data[order, None].float() / 255)
    assert torch.equal(labels, test_split.targets[order])


def test_a_subset_of_a_class_sorted_split_holds_every_digit(test_split):
    """The offline training split is stored sorted by class: a subset must not be its first images."""
    order = test_split.targets.argsort(stable=True)
    by_class = type("SortedSplit", (), {"data": test_split.data[order], "targets": test_split.targets[order]})
    subset = DeviceImages.from_dataset(by_class, subset_size=500)
    again = DeviceImages.from_dataset(by_class, subset_size=500)
    assert len(subset) == 500 and torch.equal(subset.images, again.images)
    assert subset.labels.bincount(minlength=10).min() >= 25  # about 50 of each digit
    # every image of the subset is one of the split's, with its own label
    flat = by_class.data.flatten(1)
    for image, label in zip(subset.images[:20], subset.labels[:20]):
        matches = (flat == image.flatten()).all(1).nonzero().flatten()
        assert label in by_class.targets[matches]


# ----------------------------------------------------------------------------- batches

def test_every_image_appears_once_per_epoch():
    data = indexed_images(120)
    seen = [i for images, _ in data.batches(10, torch.Generator().manual_seed(1)) for i in indices_of(images)]
    assert sorted(seen) == list(range(120))


def test_the_last_partial_batch_is_dropped_without_repeats():
    data = indexed_images(120)
    assert data.num_batches(50) == 2
    batches = list(data.batches(50, torch.Generator().manual_seed(2)))
    seen = [i for images, _ in batches for i in indices_of(images)]
    assert len(batches) == 2 and len(seen) == 100 and len(set(seen)) == 100


def test_labels_travel_with_their_images():
    for images, labels in indexed_images(100).batches(20, torch.Generator().manual_seed(3)):
        assert [i % 10 for i in indices_of(images)] == labels.tolist()


def test_shuffling_is_reproducible_with_a_generator():
    data = indexed_images(100)

    def epoch(seed):
        return [indices_of(images) for images, _ in data.batches(25, torch.Generator().manual_seed(seed))]

    assert epoch(4) == epoch(4)
    assert epoch(4) != epoch(5)
    generator = torch.Generator().manual_seed(4)
    first, second = ([indices_of(x) for x, _ in data.batches(25, generator)] for _ in range(2))
    assert first != second, "a new epoch from the same generator must be a new order"


def test_without_dropping_the_last_batch_every_image_comes_once_in_order():
    batches = [indices_of(images) for images, _ in indexed_images(25).batches(10, shuffle=False, drop_last=False)]
    assert batches == [list(range(0, 10)), list(range(10, 20)), list(range(20, 25))]
    shuffled = [i for images, _ in indexed_images(25).batches(10, torch.Generator().manual_seed(6), drop_last=False)
                for i in indices_of(images)]
    assert sorted(shuffled) == list(range(25))
    assert [len(x) for x, _ in indexed_images(7).batches(10, shuffle=False, drop_last=False)] == [7]


def test_without_shuffling_the_order_is_the_datasets():
    batches = [indices_of(images) for images, _ in indexed_images(30).batches(10, shuffle=False)]
    assert batches == [list(range(0, 10)), list(range(10, 20)), list(range(20, 30))]


def test_batches_come_in_the_value_range():
    images = torch.tensor([0, 255], dtype=torch.uint8).view(2, 1, 1, 1).expand(2, 1, 28, 28).contiguous()
    signed = DeviceImages(images, torch.tensor([0, 1]), value_range="signed")
    x, _ = next(signed.batches(2, shuffle=False))
    assert x[0].unique().tolist() == [-1.0] and x[1].unique().tolist() == [1.0]


def test_device_images_reject_bad_arguments():
    images, labels = torch.zeros(5, 1, 28, 28, dtype=torch.uint8), torch.zeros(5, dtype=torch.long)
    with pytest.raises(ValueError, match="`images`"):
        DeviceImages(images[:, 0], labels)
    with pytest.raises(ValueError, match="`labels`"):
        DeviceImages(images, labels[:4])
    with pytest.raises(ValueError, match="`value_range`"):
        DeviceImages(images, labels, value_range="zero-one")
    data = DeviceImages(images, labels)
    with pytest.raises(ValueError, match="`batch_size`"):
        next(data.batches(6))
    with pytest.raises(ValueError, match="`batch_size`"):
        data.num_batches(0)
    with pytest.raises(ValueError, match="`count`"):
        data.first(0)


# ----------------------------------------------------------------------------- the validation split

@pytest.mark.parametrize("count, sizes", [(60_000, (55_000, 5_000)), (5_000, (4_583, 417)), (512, (469, 43))])
def test_validation_split_sizes_are_mnists_55000_and_5000_in_proportion(count, sizes):
    assert VALIDATION_FRACTION * 60_000 == 5_000
    train, held_out = validation_split(numbered(count))
    assert (len(train), len(held_out)) == sizes


def test_validation_split_is_disjoint_covers_every_image_and_keeps_labels_range_and_order():
    data = numbered(1_000, value_range="unit")
    train, held_out = validation_split(data)
    train_ids, held_out_ids = numbers_of(train), numbers_of(held_out)
    assert not set(train_ids) & set(held_out_ids)
    assert sorted(train_ids + held_out_ids) == list(range(1_000))
    assert train_ids == sorted(train_ids) and held_out_ids == sorted(held_out_ids), "each part keeps the stored order"
    for part, ids in ((train, train_ids), (held_out, held_out_ids)):
        assert part.labels.tolist() == [i % 10 for i in ids]
        assert part.value_range == "unit" and part.device == data.device


def test_validation_split_is_reproducible_and_fixed_by_its_seed():
    first, again = validation_split(numbered(600)), validation_split(numbered(600))
    assert numbers_of(first[1]) == numbers_of(again[1]) and numbers_of(first[0]) == numbers_of(again[0])
    assert numbers_of(validation_split(numbered(600), seed=2)[1]) != numbers_of(first[1])
    assert len(validation_split(numbered(600), fraction=0.5)[1]) == 300


def test_validation_split_of_the_class_sorted_training_file_holds_every_digit_in_both_parts(mnist_root):
    """The offline copy stores its training digits sorted by class: the held-out digits must not be the last ones."""
    data = DeviceImages.from_dataset(load_mnist(train=True, root=mnist_root))
    train, held_out = validation_split(data)
    assert len(held_out) == round(len(data) / 12)
    assert held_out.labels.bincount(minlength=10).min() > 0.4 * len(held_out) / 10
    assert train.labels.bincount(minlength=10).min() > 0.4 * len(train) / 10
    flat = torch.cat([train.images, held_out.images]).flatten(1)
    assert flat.shape[0] == len(data) and torch.equal(flat.sum(0), data.images.flatten(1).sum(0))


@pytest.mark.parametrize("fraction", [0.0, 1.0, 1, 0.0001])
def test_validation_split_rejects_a_fraction_that_empties_a_part(fraction):
    with pytest.raises(ValueError, match="`fraction`"):
        validation_split(numbered(100), fraction=fraction)


# ----------------------------------------------------------------------------- conversions

def test_to_range_and_back():
    pixels = torch.tensor([0, 51, 255], dtype=torch.uint8)
    torch.testing.assert_close(to_range(pixels, "unit"), torch.tensor([0.0, 0.2, 1.0]))
    torch.testing.assert_close(to_range(pixels, "signed"), torch.tensor([-1.0, -0.6, 1.0]))
    torch.testing.assert_close(to_unit(to_range(pixels, "signed")), to_range(pixels, "unit"))
    torch.testing.assert_close(to_unit(torch.tensor([-3.0, 0.0, 3.0])), torch.tensor([0.0, 0.5, 1.0]))


@pytest.mark.parametrize("dtype", [torch.float32, torch.int64])
def test_to_range_rejects_non_uint8_pixels(dtype):
    with pytest.raises(TypeError, match="`images`.*uint8"):
        to_range(torch.zeros(2, 1, 28, 28, dtype=dtype), "unit")


def test_to_range_rejects_bad_arguments():
    with pytest.raises(ValueError, match="`value_range`"):
        to_range(torch.zeros(2, dtype=torch.uint8), "0-255")
    with pytest.raises(TypeError, match="`images`"):
        to_range([0, 255], "unit")
