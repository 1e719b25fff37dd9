"""Batched augmentation and the seeded, resumable device batch streams."""
import numpy as np
import pytest
import torch

from gaea_nas.data import (BatchAugment, Dataset, DeviceBatches, DeviceData, cutout, normalize,
                           random_crop, random_flip, search_streams, split_indices, subset_indices)


def _images(n=6, h=8, w=8, seed=0):
    g = torch.Generator().manual_seed(seed)
    return torch.randint(1, 256, (n, 3, h, w), generator=g, dtype=torch.int64).to(torch.uint8)


def test_random_crop_offsets_and_zero_borders():
    x = _images()
    oy = torch.tensor([4, 0, 8, 4, 0, 8])
    ox = torch.tensor([4, 0, 8, 0, 8, 4])
    out = random_crop(x, oy, ox, padding=4)
    assert out.shape == x.shape and out.dtype == torch.uint8
    assert torch.equal(out[0], x[0])  # centre offset = identity
    # offset 0: the image moves down/right by 4; top rows / left cols are padding zeros
    assert (out[1, :, :4, :] == 0).all() and (out[1, :, :, :4] == 0).all()
    assert torch.equal(out[1, :, 4:, 4:], x[1, :, :4, :4])
    # offset 8: moves up/left; bottom rows / right cols are zeros
    assert (out[2, :, 4:, :] == 0).all() and torch.equal(out[2, :, :4, :4], x[2, :, 4:, 4:])
    assert torch.equal(out[3, :, :, 4:], x[3, :, :, :4]) and (out[3, :, :, :4] == 0).all()
    # against a per-image reference
    p = torch.nn.functional.pad(x, (4, 4, 4, 4))
    for i in range(6):
        assert torch.equal(out[i], p[i, :, oy[i]:oy[i] + 8, ox[i]:ox[i] + 8])


def test_flip_is_exact_mirror():
    x = _images()
    mask = torch.tensor([True, False, True, False, False, True])
    out = random_flip(x, mask)
    for i in range(6):
        assert torch.equal(out[i], x[i].flip(-1) if mask[i] else x[i])


def test_normalize_matches_formula():
    x = _images()
    mean, std = (0.4914, 0.4822, 0.4465), (0.2470, 0.2435, 0.2616)
    out = normalize(x, mean, std)
    ref = (x.double() / 255 - torch.tensor(mean).double().view(1, 3, 1, 1)) / torch.tensor(std).double().view(1, 3, 1, 1)
    torch.testing.assert_close(out.double(), ref, atol=1e-5, rtol=1e-5)
    assert out.dtype == torch.float32
    assert normalize(x, mean, std, channels_last=True).is_contiguous(memory_format=torch.channels_last)


def test_cutout_zeros_a_square():
    x = torch.ones(3, 3, 32, 32)
    out = cutout(x, torch.tensor([16, 0, 31]), torch.tensor([16, 0, 20]), length=16)
    assert (out[0, :, 8:24, 8:24] == 0).all() and out[0].eq(0).sum() == 3 * 16 * 16
    assert (out[1, :, :8, :8] == 0).all() and out[1].eq(0).sum() == 3 * 8 * 8  # clipped at the corner
    assert out[2].eq(0).sum() == 3 * 9 * 16  # rows 23..31, cols 12..27


def test_batch_augment_is_seeded_and_eval_only_normalises():
    x = _images(16)
    aug = BatchAugment((0.5,) * 3, (0.25,) * 3, cutout=4)
    a = aug(x, torch.Generator().manual_seed(3))
    b = aug(x, torch.Generator().manual_seed(3))
    assert torch.equal(a, b) and a.shape == (16, 3, 8, 8)
    ev = BatchAugment((0.5,) * 3, (0.25,) * 3, train=False)(x)
    torch.testing.assert_close(ev, normalize(x, (0.5,) * 3, (0.25,) * 3))


def _data(n=50):
    imgs = np.arange(n, dtype=np.uint8)[:, None, None, None] * np.ones((1, 4, 4, 3), np.uint8)
    return DeviceData.from_arrays(imgs, np.arange(n))


def test_each_epoch_is_a_permutation_and_seeded():
    data = _data(50)
    s = DeviceBatches(data, 10, seed=5)
    assert len(s) == 5
    epochs = []
    for _ in range(3):
        ys = torch.cat([y for _, y in s])
        assert sorted(ys.tolist()) == list(range(50))
        epochs.append(ys)
    assert s.state_dict()["epoch"] == 3 and s.state_dict()["position"] == 0
    assert not torch.equal(epochs[0], epochs[1])
    t = DeviceBatches(data, 10, seed=5)
    assert torch.equal(torch.cat([y for _, y in t]), epochs[0])
    u = DeviceBatches(data, 10, seed=6)
    assert not torch.equal(torch.cat([y for _, y in u]), epochs[0])
    # images follow labels; stored NCHW
    x, y = DeviceBatches(data, 7, seed=1).next_batch()
    assert x.shape == (7, 3, 4, 4) and torch.equal(x[:, 0, 0, 0].long(), y)


def test_drop_last_and_subset_indices():
    data = _data(50)
    assert len(DeviceBatches(data, 16, drop_last=True)) == 3
    keep = DeviceBatches(data, 16, drop_last=False, seed=2)
    assert len(keep) == 4
    ys = torch.cat([y for _, y in keep])
    assert sorted(ys.tolist()) == list(range(50))
    sub = DeviceBatches(data, 5, indices=torch.tensor([1, 3, 5, 7, 9, 11, 13, 15, 17, 19]))
    assert sorted(torch.cat([y for _, y in sub]).tolist()) == list(range(1, 20, 2))
    with pytest.raises(ValueError):
        DeviceBatches(data, 64)


def test_resume_mid_epoch_identical():
    data = _data(60)
    aug = BatchAugment((0.5,) * 3, (0.5,) * 3, padding=1)
    ref = DeviceBatches(data, 8, seed=11, transform=aug)
    ref_batches = [ref.next_batch() for _ in range(20)]  # crosses epoch boundaries (7 per epoch)
    s = DeviceBatches(data, 8, seed=11, transform=aug)
    for _ in range(9):
        s.next_batch()
    state = s.state_dict()
    assert state["epoch"] == 1 and state["position"] == 2
    r = DeviceBatches(data, 8, seed=11, transform=aug)
    r.load_state_dict(state)
    resumed = list(r)  # rest of epoch 1
    assert len(resumed) == 5
    resumed += [r.next_batch() for _ in range(6)]
    for (xa, ya), (xb, yb) in zip(ref_batches[9:], resumed):
        assert torch.equal(ya, yb) and torch.equal(xa, xb)


def test_fresh_draws_are_independent_seeded_and_resumable():
    data = _data(60)  # labels are the indices
    a = DeviceBatches(data, 8, seed=5, fresh_draws=True)
    batches = [a.next_batch()[1] for _ in range(30)]
    assert len(a) == 7 and a.state_dict()["epoch"] == 4  # epochs keep their length
    assert all(len(set(b.tolist())) == 8 for b in batches)  # distinct within a batch
    # across steps the same image comes back within an epoch (with replacement)
    assert len(set(torch.cat(batches[:7]).tolist())) < 56
    b = DeviceBatches(data, 8, seed=5, fresh_draws=True)
    b.load_state_dict({"epoch": 2, "position": 3, "seed": 5})
    assert torch.equal(b.next_batch()[1], batches[2 * 7 + 3])
    c = DeviceBatches(data, 8, seed=6, fresh_draws=True)
    assert not torch.equal(c.next_batch()[1], batches[0])


def test_rank_shards_are_disjoint():
    data = _data(40)
    shards = [torch.cat([y for _, y in DeviceBatches(data, 5, seed=1, rank=r, world_size=2)]) for r in (0, 1)]
    assert len(shards[0]) == len(shards[1]) == 20
    assert sorted(torch.cat(shards).tolist()) == list(range(40))


def test_subset_and_split_are_seeded_disjoint_covering():
    a = subset_indices(100, 30, seed=0)
    assert torch.equal(a, subset_indices(100, 30, seed=0)) and len(set(a.tolist())) == 30
    assert not torch.equal(a, subset_indices(100, 30, seed=1))
    assert torch.equal(subset_indices(10, None, 0), torch.arange(10))
    first, second = split_indices(torch.arange(101), 0.5, seed=3)
    assert len(first) == 50 and len(second) == 51
    assert not set(first.tolist()) & set(second.tolist())
    assert sorted(first.tolist() + second.tolist()) == list(range(101))
    f2, _ = split_indices(torch.arange(101), 0.5, seed=3)
    assert torch.equal(first, f2)


def _dataset(n=64):
    rng = np.random.default_rng(0)
    return Dataset("toy", rng.integers(0, 256, (n, 8, 8, 3), dtype=np.uint8), np.arange(n) % 4,
                   rng.integers(0, 256, (20, 8, 8, 3), dtype=np.uint8), np.arange(20) % 4,
                   ["a", "b", "c", "d"], (0.5,) * 3, (0.25,) * 3)


def test_search_streams_erm_and_bilevel():
    ds = _dataset()
    w, a = search_streams(ds, "erm", 8, seed=0)
    assert w.data is a.data  # images moved once, shared
    yw = torch.cat([torch.as_tensor(w.epoch_order(0))])
    ya = torch.cat([torch.as_tensor(a.epoch_order(0))])
    assert sorted(yw.tolist()) == sorted(ya.tolist()) == list(range(64))
    assert not torch.equal(yw, ya)  # independently shuffled
    x, _ = w.next_batch()
    assert x.dtype == torch.float32 and x.shape == (8, 3, 8, 8)
    w, a = search_streams(ds, "bilevel", 8, seed=0)
    iw, ia = set(w.indices.tolist()), set(a.indices.tolist())
    assert not iw & ia and iw | ia == set(range(64)) and len(iw) == 32
    w, a = search_streams(ds, "bilevel", 4, seed=0, search_on_test_half=True, train_images=40)
    assert len(w.indices) == 40 and len(a.indices) == 10 and a.data.images.shape[0] == 20
    with pytest.raises(ValueError):
        search_streams(ds, "joint", 8)
