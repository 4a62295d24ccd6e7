#!/bin/sh
# Route this shell's git (and other HTTPS tools) through goblet.
# Hosts outside goblet_hosts are tunnelled untouched, so curl, pip, npm etc.
# keep working without trusting the goblet CA.
# A goblet serving other machines asks for proxy credentials (proxyauth):
# http://user:password@goblet.internal:8080 (from your secret store, not a file).
export HTTPS_PROXY=http://goblet.internal:8080
export NO_PROXY=localhost,127.0.0.1

# git reads GIT_SSL_CAINFO before http.sslCAInfo; point it at a bundle that
# contains the goblet CA *and* the public CAs (for hosts git reaches directly).
cat /etc/ssl/certs/ca-certificates.crt /path/to/mitmproxy-ca-cert.pem > "$HOME/.goblet-ca-bundle.pem"
export GIT_SSL_CAINFO="$HOME/.goblet-ca-bundle.pem"

git clone https://github.com/org/repo
