# One image for every service: docker-compose.yml runs each with its own command,
# `docker run -e SERVICE=users the-shop` runs one by hand.
FROM python:3.13-slim

ENV PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1

WORKDIR /app
COPY . .
# The pinned dependencies; installing the Redis transport library also installs the .pth file
# that activates the Redis transport in every Python process of the image.
RUN pip install --constraint constraints.txt ./nameko-redis-transport . \
    && useradd --system --no-create-home shop
USER shop

EXPOSE 3000
CMD ["sh", "-c", "exec nameko run --config config.yml \"${SERVICE:?set SERVICE to users, orders, payments or gateway}.service\""]
