# syntax=docker/dockerfile:1
# segkn on NVIDIA GPUs: train, evaluate, segment images and export to ONNX.
#   docker build -t segkn .
#   docker run --rm --gpus all segkn --help
# docs/deployment.md has the full commands (mounts, multi-GPU, ONNX Runtime).
#
# Base: the official PyTorch CUDA *runtime* image whose torch is the one pyproject.toml pins
# (torch==2.14.1), in its CUDA 13.0 build, the build segkn is developed and tested with (cu130).
# If that tag is not available to you (a registry mirror without it, or a host driver too old for
# CUDA 13), choose another CUDA build of the same torch, for example
#   docker build --build-arg BASE_IMAGE=pytorch/pytorch:2.14.1-cuda12.6-cudnn9-runtime -t segkn .
# Only the cuda/cudnn part of the tag may change: an image with another torch version does not satisfy
# the pin, pip would then replace its torch, and the check in the install step stops the build.
ARG BASE_IMAGE=pytorch/pytorch:2.14.1-cuda13.0-cudnn9-runtime
FROM ${BASE_IMAGE}

LABEL org.opencontainers.image.title="segkn" \
      org.opencontainers.image.description="Semantic segmentation with Kernel Normalized networks" \
      org.opencontainers.image.licenses="MIT"

ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1

# No apt packages: opencv-python-headless, onnxruntime and Pillow ship their own libraries in their
# wheels and need only libc, libstdc++, libgcc_s and zlib from the system, which the base image has
# (the headless OpenCV build links neither libGL nor GLib).

# segkn and its pinned dependencies, with the `viz` extra (matplotlib: the pictures of `segkn eval` and
# `segkn plot`). The image's torch and torchvision already satisfy the pins, so pip keeps them (and
# their CUDA build); the comparison after the install fails the build if pip replaced either.
# PIP_BREAK_SYSTEM_PACKAGES lets pip install into the image's Python even where the image marks it
# externally managed (PEP 668); pip ignores it otherwise.
COPY pyproject.toml README.md /tmp/segkn-src/
COPY segkn /tmp/segkn-src/segkn
RUN before="$(python -c 'import torch, torchvision; print(torch.__version__, torchvision.__version__)')" \
 && PIP_BREAK_SYSTEM_PACKAGES=1 python -m pip install "/tmp/segkn-src[viz]" \
 && after="$(python -c 'import torch, torchvision; print(torch.__version__, torchvision.__version__)')" \
 && echo "torch, torchvision: ${before} -> ${after}" \
 && test "${before}" = "${after}" \
 && python -c "import cv2, matplotlib, onnxruntime, segkn.cli" \
 && segkn --help > /dev/null \
 && rm -rf /tmp/segkn-src

# The recipes and the tools/*.py wrappers live in the working directory, which is laid out like a
# checkout, so the recipes' relative paths (data/..., weights/..., runs/) resolve the same way.
# Datasets and weights are never baked in or downloaded: mount them at data/ and weights/.
WORKDIR /workspace
COPY configs ./configs
COPY tools ./tools
RUN useradd --create-home --shell /bin/bash segkn \
 && mkdir -p /workspace/data /workspace/weights /workspace/runs \
 && chown segkn:segkn /workspace /workspace/runs

# torch uses one thread per core of the host (not of the container's CPU quota); a few threads keep
# CPU-side work from oversubscribing a shared machine. Raise it for CPU inference: -e OMP_NUM_THREADS=16.
ENV OMP_NUM_THREADS=4

USER segkn
VOLUME ["/workspace/data", "/workspace/runs"]
ENTRYPOINT ["segkn"]
CMD ["--help"]
