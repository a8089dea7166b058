FROM python:3.11-slim
WORKDIR /app
COPY pyproject.toml README.md alembic.ini ./
COPY models ./models
COPY migrations ./migrations
COPY worker ./worker
RUN pip install --no-cache-dir .
RUN useradd --system --home /app runwarden && chown -R runwarden /app
USER runwarden
ENTRYPOINT ["runwarden"]
CMD ["--help"]
