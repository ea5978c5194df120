# aftzoo on a CUDA machine: the app on port 7860.
#   docker build -t aftzoo .
#   docker run --gpus all -p 7860:7860 -v aftzoo-home:/data \
#       -e AFTZOO_APP_USER=me -e AFTZOO_APP_PASSWORD=... aftzoo
# The torch wheel brings its own CUDA 13 libraries; the image needs only the driver's
# user-space side, which the NVIDIA container runtime mounts.
FROM nvidia/cuda:13.0.1-base-ubuntu24.04

ENV DEBIAN_FRONTEND=noninteractive \
    PYTHONUNBUFFERED=1 \
    AFTZOO_HOME=/data \
    AFTZOO_PACKS=/opt/aftzoo-packs \
    AFTZOO_ORT=gpu \
    GRADIO_ANALYTICS_ENABLED=False \
    HF_HUB_DISABLE_TELEMETRY=1

# Debian/Ubuntu package versions move with the base image's security updates; pinning them breaks rebuilds.
# hadolint ignore=DL3008
RUN apt-get update \
    && apt-get install -y --no-install-recommends python3 python3-venv make ca-certificates dataset-fashion-mnist \
    && rm -rf /var/lib/apt/lists/*

WORKDIR /opt/aftzoo
COPY pyproject.toml README.md Makefile ./
COPY requirements ./requirements
COPY scripts ./scripts
COPY app ./app
COPY zoo ./zoo
COPY transfer ./transfer
COPY storage ./storage
RUN VENV=/opt/venv scripts/install.sh && rm -rf /root/.cache/pip

ENV PATH=/opt/venv/bin:$PATH
VOLUME ["/data"]
EXPOSE 7860
CMD ["aftzoo", "app", "--host", "0.0.0.0", "--port", "7860"]
