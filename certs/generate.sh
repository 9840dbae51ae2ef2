#!/usr/bin/env bash
# Regenerates the test PKI in this folder (openssl). Everything here is for tests only.
#
#   ca.pem / ca.key                 the test CA
#   server.pem / server.key         localhost, 127.0.0.1; SEC1 EC key; chain: server then CA
#   server2.pem / server2.key       a second server certificate (CN hotdog-reloaded), PKCS#8 key
#   client.pem / client.key         CN tenant-a, SAN DNS tenant-a.example.com; PKCS#8 key
#   client-rsa.pem / client-rsa.key CN tenant-b; PKCS#1 RSA key
#   expired.pem / expired.key       a client certificate from the CA that expired in 2020
#   other-ca.pem, untrusted.pem / untrusted.key   a client certificate from another CA
set -euo pipefail
cd "$(dirname "$0")"
days=36500
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT

ca() { # name subject
    openssl genpkey -algorithm EC -pkeyopt ec_paramgen_curve:P-256 -out "$1.key"
    openssl req -x509 -new -key "$1.key" -subj "$2" -days $days -sha256 \
        -addext basicConstraints=critical,CA:TRUE -addext keyUsage=critical,keyCertSign,cRLSign \
        -out "$1.pem"
}

sign() { # ca name subject extensions-file
    openssl req -new -key "$2.key" -subj "$3" -out "$tmp/$2.csr"
    openssl x509 -req -in "$tmp/$2.csr" -CA "$1.pem" -CAkey "$1.key" -CAcreateserial \
        -days $days -sha256 -extfile "$4" -out "$2.pem"
}

cat > "$tmp/server.ext" <<EXT
basicConstraints=CA:FALSE
keyUsage=critical,digitalSignature,keyEncipherment
extendedKeyUsage=serverAuth
subjectAltName=DNS:localhost,IP:127.0.0.1
EXT
cat > "$tmp/client.ext" <<EXT
basicConstraints=CA:FALSE
keyUsage=critical,digitalSignature,keyEncipherment
extendedKeyUsage=clientAuth
subjectAltName=DNS:tenant-a.example.com,DNS:a.example.net
EXT
cat > "$tmp/client-b.ext" <<EXT
basicConstraints=CA:FALSE
keyUsage=critical,digitalSignature,keyEncipherment
extendedKeyUsage=clientAuth
EXT

ca ca "/CN=hotdog test CA"
ca other-ca "/CN=some other CA"

openssl ecparam -name prime256v1 -genkey -noout -out server.key # SEC1
sign ca server "/CN=localhost" "$tmp/server.ext"
cat ca.pem >> server.pem

openssl genpkey -algorithm EC -pkeyopt ec_paramgen_curve:P-256 -out server2.key # PKCS#8
sign ca server2 "/CN=hotdog-reloaded" "$tmp/server.ext"

openssl genpkey -algorithm EC -pkeyopt ec_paramgen_curve:P-256 -out client.key
sign ca client "/CN=tenant-a" "$tmp/client.ext"

openssl genrsa -traditional -out client-rsa.key 2048 # PKCS#1
sign ca client-rsa "/CN=tenant-b" "$tmp/client-b.ext"

openssl genpkey -algorithm EC -pkeyopt ec_paramgen_curve:P-256 -out untrusted.key
sign other-ca untrusted "/CN=intruder" "$tmp/client-b.ext"

# An expired client certificate: `openssl ca` can set dates in the past.
openssl genpkey -algorithm EC -pkeyopt ec_paramgen_curve:P-256 -out expired.key
openssl req -new -key expired.key -subj "/CN=expired" -out "$tmp/expired.csr"
mkdir -p "$tmp/db"
touch "$tmp/db/index.txt"
cat > "$tmp/ca.cnf" <<CNF
[ca]
default_ca = test
[test]
database = $tmp/db/index.txt
new_certs_dir = $tmp/db
serial = $tmp/db/serial
default_md = sha256
policy = any
x509_extensions = ext
[any]
commonName = supplied
[ext]
basicConstraints = CA:FALSE
extendedKeyUsage = clientAuth
CNF
echo 1000 > "$tmp/db/serial"
openssl ca -batch -config "$tmp/ca.cnf" -cert ca.pem -keyfile ca.key -in "$tmp/expired.csr" \
    -startdate 20200101000000Z -enddate 20200102000000Z -out "$tmp/expired.pem" 2>/dev/null
openssl x509 -in "$tmp/expired.pem" -out expired.pem

rm -f ./*.srl
echo "test certificates written to $(pwd)"
