"""Serve ClickHouse 26.9 over HTTP from the chdb-core wheel.

chdb-core bundles the full ClickHouse engine with its HTTP/TCP handlers but no server
program. clickhouse-local inside it starts listening after `SYSTEM START LISTEN HTTP`;
a blocking query then keeps the process (and so the server) alive. Kill the process to
stop the server.

Users: clickhouse-local ignores `users_config`, but honours `user_directories` in the
config.xml of its working directory, and the users.xml named there is enforced for HTTP
clients, grants included. Besides `default` (everything, for administration and tests),
it defines the least-privilege users Sluice's tiers run as (see the README's security
model):
- `sluice_tenant`: the tenants' SQL. SELECT on the `default` database and a few
  harmless system tables; no file/url/remote/database sources, no system.processes, no
  KILL.
- `sluice_monitor`: Sluice's own control queries: progress from system.processes,
  KILL QUERY, the server's formats.

usage: chdb_server.py DATA_DIR HTTP_PORT TCP_PORT
"""
import os
import sys

data_dir, http_port, tcp_port = sys.argv[1], sys.argv[2], sys.argv[3]
os.makedirs(data_dir, exist_ok=True)
os.chdir(data_dir)

USERS_XML = """<clickhouse>
  <profiles><default></default></profiles>
  <users>
    <default>
      <password></password>
      <networks><ip>::/0</ip></networks>
      <profile>default</profile>
      <quota>default</quota>
    </default>
    <sluice_tenant>
      <password>sluice-tenant-local</password>
      <networks><ip>127.0.0.1</ip><ip>::1</ip></networks>
      <profile>default</profile>
      <quota>default</quota>
      <grants>
        <query>GRANT SELECT ON default.*</query>
        <query>GRANT SELECT ON system.numbers</query>
        <query>GRANT SELECT ON system.numbers_mt</query>
        <query>GRANT SELECT ON system.one</query>
        <query>GRANT SELECT ON system.zeros</query>
      </grants>
    </sluice_tenant>
    <sluice_monitor>
      <password>sluice-monitor-local</password>
      <networks><ip>127.0.0.1</ip><ip>::1</ip></networks>
      <profile>default</profile>
      <quota>default</quota>
      <grants>
        <query>GRANT SELECT ON system.processes</query>
        <query>GRANT SELECT ON system.formats</query>
        <query>GRANT KILL QUERY ON *.*</query>
      </grants>
    </sluice_monitor>
  </users>
  <quotas>
    <default>
      <interval>
        <duration>3600</duration><queries>0</queries><errors>0</errors>
        <result_rows>0</result_rows><read_rows>0</read_rows><execution_time>0</execution_time>
      </interval>
    </default>
  </quotas>
</clickhouse>
"""

with open("users.xml", "w") as f:
    f.write(USERS_XML)
with open("config.xml", "w") as f:
    f.write(
        "<clickhouse><listen_host>127.0.0.1</listen_host>"
        f"<http_port>{http_port}</http_port><tcp_port>{tcp_port}</tcp_port>"
        "<user_directories><users_xml>"
        f"<path>{os.path.join(data_dir, 'users.xml')}</path>"
        "</users_xml></user_directories></clickhouse>"
    )

# Imported only now: importing chdb starts the engine, which reads config.xml.
import chdb  # noqa: E402,F401
from chdb import _chdb  # noqa: E402

_chdb.query(
    "SYSTEM START LISTEN HTTP; SYSTEM START LISTEN TCP; "
    "SELECT sleepEachRow(1) FROM numbers(1000000000) "
    "SETTINGS function_sleep_max_microseconds_per_block=4000000000, max_block_size=1 FORMAT Null",
    "CSV",
    path=os.path.join(data_dir, "data"),
)
