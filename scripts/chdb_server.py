"""Serve ClickHouse 26.9 over HTTP from the chdb-core wheel.

chdb-core bundles the full ClickHouse engine with its HTTP/TCP handlers but no server
program. clickhouse-local inside it starts listening after `SYSTEM START LISTEN HTTP`;
a blocking query then keeps the process (and so the server) alive. Kill the process to
stop the server.

usage: chdb_server.py DATA_DIR HTTP_PORT TCP_PORT
"""
import os
import sys

import chdb  # noqa: F401  (loads the engine)
from chdb import _chdb

data_dir, http_port, tcp_port = sys.argv[1], sys.argv[2], sys.argv[3]
os.makedirs(data_dir, exist_ok=True)
os.chdir(data_dir)
with open("config.xml", "w") as f:
    f.write(
        "<clickhouse><listen_host>127.0.0.1</listen_host>"
        f"<http_port>{http_port}</http_port><tcp_port>{tcp_port}</tcp_port></clickhouse>"
    )
_chdb.query(
    "SYSTEM START LISTEN HTTP; SYSTEM START LISTEN TCP; "
    "SELECT sleepEachRow(1) FROM numbers(1000000000) "
    "SETTINGS function_sleep_max_microseconds_per_block=4000000000, max_block_size=1 FORMAT Null",
    "CSV",
    path=os.path.join(data_dir, "data"),
)
