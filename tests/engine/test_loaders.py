import pytest
from torch.utils.data import DataLoader, Dataset

from segkn.data import DatasetError
from segkn.engine.loaders import worker_errors_unwrapped


class _Failing(Dataset):
    def __init__(self, error: Exception) -> None:
        self.error = error

    def __len__(self) -> int:
        return 4

    def __getitem__(self, index: int) -> int:
        if index == 2:
            raise self.error
        return index


@pytest.mark.parametrize(
    "error",
    [
        DatasetError("mask /data/masks/b.png has label values 7 outside the 3 classes"),
        ValueError("two\nlines"),
        OSError("disk gone"),
    ],
)
def test_a_worker_error_is_raised_as_the_worker_raised_it(error):
    loader = DataLoader(_Failing(error), batch_size=1, num_workers=1)
    with pytest.raises(type(error)) as wrapped:
        list(loader)
    assert "Caught" in str(wrapped.value)  # what torch does by itself
    with pytest.raises(type(error)) as caught:
        with worker_errors_unwrapped():
            list(loader)
    assert type(caught.value) is type(error) and str(caught.value) == str(error)
    assert caught.value.__suppress_context__


def test_other_errors_pass_unchanged():
    error = RuntimeError("Caught nothing")
    with pytest.raises(RuntimeError) as caught:
        with worker_errors_unwrapped():
            raise error
    assert caught.value is error
