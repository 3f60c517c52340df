"""course_lib.classifier: the shipped weights on real MNIST test digits, the model's shapes, augmentation,
and the fp16 weights file."""

from __future__ import annotations

import pytest
import torch

from course_lib import classifier
from course_lib.data import DeviceImages, load_mnist

pytestmark = pytest.mark.usefixtures("single_thread")


def test_shipped_classifier_accuracy_on_real_test_digits(mnist_root):
    test = DeviceImages.from_dataset(load_mnist(train=False, root=mnist_root), "cpu", "unit", subset_size=2000)
    images, labels = test.first(len(test))
    assert classifier.accuracy(classifier.load_classifier("cpu"), images, labels) >= 0.97


def test_shipped_weights_are_small_and_record_how_they_were_trained():
    assert classifier.WEIGHTS_PATH.stat().st_size < 1_000_000
    meta = torch.load(classifier.WEIGHTS_PATH, weights_only=True)["meta"]
    assert meta["test_accuracy"] >= 0.97 and meta["train_images"] >= 5000


def test_logits_features_and_probabilities_shapes():
    model = classifier.load_classifier("cpu")
    assert model is classifier.load_classifier("cpu")           # loaded once
    images = torch.rand(5, 1, 28, 28, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        assert model(images).shape == (5, 10)
        assert model.features(images).shape == (5, classifier.FEATURE_DIM)
    probabilities, features = classifier.predict(model, images, batch_size=2)
    assert features.shape == (5, classifier.FEATURE_DIM)
    torch.testing.assert_close(probabilities.sum(1), torch.ones(5))


def test_bad_inputs_name_the_argument():
    model = classifier.load_classifier("cpu")
    with pytest.raises(ValueError, match="`x`"):
        model(torch.rand(2, 3, 28, 28))
    with pytest.raises(ValueError, match="`labels`"):
        classifier.accuracy(model, torch.rand(4, 1, 28, 28), torch.zeros(3, dtype=torch.long))
    with pytest.raises(FileNotFoundError, match="`path`"):
        classifier.load_weights("/nonexistent/weights.pt")


def test_augment_is_the_identity_without_transform_and_moves_pixels_otherwise():
    images = torch.rand(3, 1, 28, 28, generator=torch.Generator().manual_seed(1))
    same = classifier.augment(images, max_degrees=0.0, max_shift=0.0, scale_range=(1.0, 1.0))
    torch.testing.assert_close(same, images, atol=1e-5, rtol=0)
    moved = classifier.augment(images, torch.Generator().manual_seed(2))
    assert moved.shape == images.shape and not torch.allclose(moved, images, atol=1e-3)
    again = classifier.augment(images, torch.Generator().manual_seed(2))
    torch.testing.assert_close(moved, again)


def test_weights_round_trip_through_fp16(tmp_path):
    torch.manual_seed(3)
    model = classifier.MNISTClassifier().eval()
    path = classifier.save_weights(model, tmp_path / "w.pt", {"note": "test"})
    loaded = classifier.load_weights(path)
    images = torch.rand(4, 1, 28, 28, generator=torch.Generator().manual_seed(4))
    with torch.no_grad():
        torch.testing.assert_close(loaded(images), model(images), atol=2e-2, rtol=0)
    assert torch.load(path, weights_only=True)["meta"] == {"note": "test"}
