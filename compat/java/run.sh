#!/usr/bin/env bash
# Runs Compat.java against Debian's pgJDBC (libpostgresql-jdbc-java).
set -euo pipefail
exec java -cp /usr/share/java/postgresql.jar "$(dirname "$0")/Compat.java"
