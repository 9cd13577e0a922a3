# cartox: CAR-T toxicity decision support (`cartox serve`: gunicorn processes, asyncio HTTP, README "Worker model").
#   docker build -t cartox .
#   docker run --rm -p 8080:8080 --env-file cartox.env cartox   # then: curl http://127.0.0.1:8080/healthz
# The image runs in production mode: it needs trusted JWT issuers or API keys (README "Security").
# tests/deploy/test_dockerfile.py checks this file without docker (same install and CMD in a virtualenv).
FROM python:3.11-slim

ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    CARTOX_MODE=production

# Install the project as a wheel built from pyproject.toml (rules/ and fhir_profiles/ are force-included
# into the package as service/rules and service/fhir_profiles); the sources are removed afterwards.
COPY pyproject.toml README.md /tmp/cartox/
COPY service/ /tmp/cartox/service/
COPY rules/ /tmp/cartox/rules/
COPY fhir_profiles/ /tmp/cartox/fhir_profiles/
RUN pip install --no-cache-dir /tmp/cartox && rm -rf /tmp/cartox

RUN useradd --create-home --uid 10001 --user-group cartox
USER cartox
WORKDIR /home/cartox

EXPOSE 8080

HEALTHCHECK --interval=30s --timeout=5s --start-period=20s --retries=3 \
    CMD ["python", "-c", "import urllib.request,sys; sys.exit(0 if urllib.request.urlopen('http://127.0.0.1:8080/healthz', timeout=3).status == 200 else 1)"]

# The same server and configuration checks as outside the image: the rules are compiled before the
# workers start, and a bad CARTOX_ variable ends the container with one line and exit status 2.
CMD ["cartox", "serve", "--host", "0.0.0.0", "--port", "8080"]
