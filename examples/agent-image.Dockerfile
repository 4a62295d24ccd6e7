# Trust the goblet CA in a CI runner or Terraform agent image.
# Copy only the certificate (mitmproxy-ca-cert.pem), never mitmproxy-ca.pem.
FROM debian:12-slim
RUN apt-get update && apt-get install -y --no-install-recommends git ca-certificates \
    && rm -rf /var/lib/apt/lists/*
COPY mitmproxy-ca-cert.pem /usr/local/share/ca-certificates/goblet.crt
RUN update-ca-certificates
# With proxyauth on the goblet, give the job HTTPS_PROXY=http://user:password@…
# at run time; never bake proxy credentials into the image.
ENV HTTPS_PROXY=http://goblet.internal:8080 \
    NO_PROXY=localhost,127.0.0.1
