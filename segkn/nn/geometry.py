"""Sizes of windows: the int-or-pair and padding helpers, and the geometry of a KN convolution."""

from __future__ import annotations

from collections.abc import Sequence

IntOr2 = int | Sequence[int]
Padding = int | Sequence[int]

__all__ = ["IntOr2", "KNGeometry", "Padding", "to_pad4", "to_pair"]


def to_pair(value: IntOr2, name: str = "value", positive: bool = False) -> tuple[int, int]:
    """An int or a 2-sequence as an (h, w) pair; ``positive`` also requires both to be >= 1."""
    if isinstance(value, int) and not isinstance(value, bool):
        pair = (value, value)
    elif isinstance(value, Sequence) and not isinstance(value, str) and len(value) == 2:
        pair = (int(value[0]), int(value[1]))
    else:
        raise ValueError(f"{name} must be an int or a pair (h, w), got {value!r}")
    if positive and min(pair) < 1:
        raise ValueError(f"{name}: expected positive (height, width), got {value!r}")
    return pair


def to_pad4(padding: Padding) -> tuple[int, int, int, int]:
    """Padding as (left, right, top, bottom).

    An int pads all sides; a 2-sequence is (pad_h, pad_w) as in ``nn.Conv2d``; a 4-sequence is
    (left, right, top, bottom) as in ``F.pad``.
    """
    if isinstance(padding, str):
        raise ValueError(f"string padding {padding!r} is not supported; give int, (h, w) or (l, r, t, b)")
    if isinstance(padding, int):
        return padding, padding, padding, padding
    pad = tuple(int(p) for p in padding)
    if len(pad) == 2:
        return pad[1], pad[1], pad[0], pad[0]
    if len(pad) == 4:
        return pad  # type: ignore[return-value]
    raise ValueError(f"padding must be an int, (h, w) or (left, right, top, bottom), got {padding!r}")


# A plain class rather than a frozen dataclass: TorchScript compiles it (see KNConv2d's scripting).
class KNGeometry:
    """Kernel, stride, dilation, groups and padding of a KN convolution, and how the conv pads.

    A symmetric padding is done by the convolution itself. An asymmetric one is done as the
    symmetric padding of its larger sides, cropping the extra output rows/columns (no padded copy
    of the input is made or kept for backward), unless the stride does not allow it: then the
    input is padded explicitly.
    """

    def __init__(
        self,
        kernel: tuple[int, int],
        stride: tuple[int, int],
        dilation: tuple[int, int],
        pad4: tuple[int, int, int, int],  # left, right, top, bottom
        groups: int,
    ) -> None:
        self.kernel = kernel
        self.stride = stride
        self.dilation = dilation
        self.pad4 = pad4
        self.groups = groups

    @property
    def extent(self) -> tuple[int, int]:
        return (
            self.dilation[0] * (self.kernel[0] - 1) + 1,
            self.dilation[1] * (self.kernel[1] - 1) + 1,
        )

    @property
    def padding_only_windows(self) -> bool:
        """Whether some window can hold padding only (its unit normalizes to zeros: output = bias)."""
        left, right, top, bottom = self.pad4
        extent_h, extent_w = self.extent
        return (
            max(top, bottom) >= extent_h
            or max(left, right) >= extent_w
            or (self.dilation != (1, 1) and any(self.pad4))
        )

    @property
    def conv_padding(self) -> tuple[int, int]:
        """Symmetric (h, w) padding given to the convolution (0 when the input is padded first)."""
        if self.pre_pad:
            return (0, 0)
        left, right, top, bottom = self.pad4
        return (max(top, bottom), max(left, right))

    @property
    def pre_pad(self) -> bool:
        """Whether the input must be padded explicitly (an asymmetric padding the stride cannot crop)."""
        left, right, top, bottom = self.pad4
        return (max(top, bottom) - top) % self.stride[0] != 0 or (max(left, right) - left) % self.stride[
            1
        ] != 0

    def output_size(self, h: int, w: int) -> tuple[int, int]:
        left, right, top, bottom = self.pad4
        extent_h, extent_w = self.extent
        return (
            (h + top + bottom - extent_h) // self.stride[0] + 1,
            (w + left + right - extent_w) // self.stride[1] + 1,
        )

    def crop(self) -> tuple[int, int] | None:
        """(row, column) offset of the wanted output inside the conv's output, None if it is all of it."""
        if self.pre_pad:
            return None
        left, right, top, bottom = self.pad4
        pad_h, pad_w = self.conv_padding
        if (pad_h, pad_w) == (top, left) and (top, left) == (bottom, right):
            return None
        return ((pad_h - top) // self.stride[0], (pad_w - left) // self.stride[1])
