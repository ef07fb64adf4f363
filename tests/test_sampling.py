"""One pass without replacement: batches are slices of per-epoch permutations (a pure function of seed,
stage and step), and a cell trained one epoch sees every record exactly once."""

from __future__ import annotations

import collections

import torch
from helpers import cell_cfg

from vlmscale.data import batching
from vlmscale.training import trainer as train


def test_an_epoch_is_a_permutation_and_the_next_epoch_a_different_one():
    n, b = 40, 8
    first = torch.cat([batching.batch_indices(n, b, 0, 1, step) for step in range(5)])
    second = torch.cat([batching.batch_indices(n, b, 0, 1, step) for step in range(5, 10)])
    assert sorted(first.tolist()) == list(range(n)) == sorted(second.tolist())
    assert not torch.equal(first, second)


def test_a_batch_across_an_epoch_boundary_continues_into_the_next_order():
    n = 10  # batch 4: step 2 holds records 8, 9 of epoch 0 and records 0, 1 of epoch 1
    whole = torch.cat([batching.epoch_order(n, 3, 2, 0), batching.epoch_order(n, 3, 2, 1)])
    assert torch.equal(batching.batch_indices(n, 4, 3, 2, 2), whole[8:12])


def test_batches_depend_only_on_seed_stage_and_step():
    first = batching.batch_indices(665_000, 128, 1, 2, 6000)
    batching.epoch_order.cache_clear()  # a resumed process starts with an empty cache
    resumed = batching.batch_indices(665_000, 128, 1, 2, 6000)
    assert torch.equal(resumed, first)
    assert not torch.equal(resumed, batching.batch_indices(665_000, 128, 1, 1, 6000))
    assert not torch.equal(resumed, batching.batch_indices(665_000, 128, 2, 2, 6000))


def test_one_epoch_on_40_records_sees_every_record_exactly_once(small_data, small_vision, tmp_path, monkeypatch):
    loaded = train.load_stage_samples
    monkeypatch.setattr(train, "load_stage_samples", lambda *a: {k: v[:40] for k, v in loaded(*a).items()})
    seen = collections.defaultdict(collections.Counter)
    original = batching.TrainingData.batch

    def counting(self, stage, indices):
        seen[stage].update(indices.tolist())  # positions in the stage's record list (records can repeat)
        return original(self, stage, indices)

    monkeypatch.setattr(batching.TrainingData, "batch", counting)
    one_epoch = {"epochs": 1, "lr": 1e-3}  # 40 records / batch 8: 5 steps per stage, derived from the data
    train.train_cell(cell_cfg(small_data, small_vision, tmp_path, stage1=one_epoch, stage2=one_epoch), log=print)
    for stage in ("stage1", "stage2"):  # 40 draws, 40 distinct records: each exactly once
        assert len(seen[stage]) == 40 and set(seen[stage].values()) == {1}, stage


MAX = 9  # the longest rows here are 10 tokens (V = 4 included): they are cut, the others not


def test_train_max_length_cuts_sequences_and_counts_the_rows(small_data, small_vision, tmp_path, monkeypatch):
    lengths = []
    original = batching.make_batch

    def recording(*args, **kwargs):
        batch = original(*args, **kwargs)
        lengths.append((batch.input_ids.shape[1], batch.truncated))
        return batch

    monkeypatch.setattr(batching, "make_batch", recording)
    job = cell_cfg(small_data, small_vision, tmp_path, max_length=MAX, stage1={"steps": 2, "lr": 1e-3},
                   stage2={"steps": 2, "lr": 1e-3})  # fmt: skip
    result = train.train_cell(job, log=lambda m: None)
    assert max(width for width, _ in lengths) == MAX and sum(cut for _, cut in lengths) > 0
    assert sum(result["truncated_rows_by_stage"].values()) == sum(cut for _, cut in lengths)
