import math

import pytest
import torch
import torch.multiprocessing as mp
from torchmetrics.classification import MulticlassAccuracy, MulticlassJaccardIndex

from segkn.engine.metrics import ConfusionMatrix

from ._workers import random_batch, reduce_worker


def test_matches_torchmetrics_all_classes_present():
    n = 7
    cm = ConfusionMatrix(n)
    miou = MulticlassJaccardIndex(n, ignore_index=255, average="macro")
    per_class = MulticlassJaccardIndex(n, ignore_index=255, average="none")
    aacc = MulticlassAccuracy(n, ignore_index=255, average="micro")
    macc = MulticlassAccuracy(n, ignore_index=255, average="macro")
    for seed in range(3):
        pred, target = random_batch(n, seed=seed)
        cm.update(pred, target)
        for metric in (miou, per_class, aacc, macc):
            metric.update(pred, target)
    m = cm.compute()
    assert m["miou"] == pytest.approx(miou.compute().item(), abs=1e-6)
    assert m["iou"] == pytest.approx(per_class.compute().tolist(), abs=1e-6)
    assert m["aacc"] == pytest.approx(aacc.compute().item(), abs=1e-6)
    assert m["macc"] == pytest.approx(macc.compute().item(), abs=1e-6)


def test_absent_class_left_out_of_miou():
    # class 3 is in neither target nor prediction; class 2 is predicted but never in the target
    target = torch.tensor([0, 0, 0, 1, 1, 255, 1, 0])
    pred = torch.tensor([0, 0, 1, 1, 2, 3, 1, 0])
    cm = ConfusionMatrix(4)
    cm.update(pred, target)
    m = cm.compute()
    # by hand: class 0 tp 3, union 4; class 1 tp 2, union 4; class 2 tp 0, union 1; class 3 absent
    assert m["iou"][:3] == pytest.approx([3 / 4, 2 / 4, 0.0]) and math.isnan(m["iou"][3])
    assert m["miou"] == pytest.approx((3 / 4 + 2 / 4 + 0.0) / 3)
    assert m["acc"][:2] == pytest.approx([3 / 4, 2 / 3]) and math.isnan(m["acc"][2])
    assert m["macc"] == pytest.approx((3 / 4 + 2 / 3) / 2)
    assert m["aacc"] == pytest.approx(5 / 7)
    # torchmetrics 1.9 also drops classes absent from both target and prediction from the macro mean
    tm = MulticlassJaccardIndex(4, ignore_index=255, average="macro")
    assert m["miou"] == pytest.approx(tm(pred, target).item(), abs=1e-6)
    per_class = MulticlassJaccardIndex(4, ignore_index=255, average="none")(pred, target)
    assert per_class[3].item() == 0.0  # torchmetrics fills absent classes with zero_division, segkn with NaN


def test_hand_computed_matrix_and_table():
    cm = ConfusionMatrix(3)
    cm.update(torch.tensor([[0, 1], [2, 2]]), torch.tensor([[0, 1], [1, 2]]))
    assert cm.mat.tolist() == [[1, 0, 0], [0, 1, 1], [0, 0, 1]]
    m = cm.compute()
    assert m["iou"] == pytest.approx([1.0, 0.5, 0.5])
    assert m["miou"] == pytest.approx(2 / 3)
    table = cm.table(["sky", "road", "car"])
    assert "road" in table and " 50.00" in table and "mIoU 66.67" in table
    cm.reset()
    assert cm.mat.sum() == 0


def test_out_of_range_target_rejected():
    cm = ConfusionMatrix(3)
    with pytest.raises(ValueError, match=r"target labels \[3, 7\]"):
        cm.update(torch.tensor([0, 1, 2, 0]), torch.tensor([3, 1, 7, 255]))
    with pytest.raises(ValueError, match="shape"):
        cm.update(torch.zeros(2, dtype=torch.long), torch.zeros(3, dtype=torch.long))


def test_reduce_without_distributed_is_noop():
    cm = ConfusionMatrix(2)
    cm.update(torch.tensor([0, 1]), torch.tensor([0, 0]))
    cm.reduce_from_all_processes()
    assert cm.mat.tolist() == [[1, 1], [0, 0]]


def test_all_reduce_sums_over_processes(tmp_path):
    mp.spawn(reduce_worker, args=(2, str(tmp_path / "init"), str(tmp_path)), nprocs=2, join=True)
    local = [torch.load(tmp_path / f"local{r}.pt") for r in range(2)]
    assert not torch.equal(local[0], local[1])
    for r in range(2):
        assert torch.equal(torch.load(tmp_path / f"reduced{r}.pt"), local[0] + local[1])
