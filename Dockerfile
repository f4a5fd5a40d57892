FROM python:3.11-slim
WORKDIR /app
COPY . .
RUN pip install --no-cache-dir '.[postgres]'
ENV HF_HUB_OFFLINE=1
CMD ["callqa", "worker"]
