FROM python:3.11-slim
WORKDIR /app
# Exactly the hash-pinned base set (dependencies + postgres extra) and the no-deps packages, as `make install`;
# the locks are made for CPython 3.11 on Linux x86_64, which this image is on an x86_64 host.
COPY requirements/base.lock requirements/nodeps.lock requirements/
RUN pip install --no-cache-dir --require-hashes --no-deps -r requirements/base.lock -r requirements/nodeps.lock
COPY . .
RUN pip install --no-cache-dir --no-deps --no-build-isolation .
ENV HF_HUB_OFFLINE=1
CMD ["callqa", "worker"]
