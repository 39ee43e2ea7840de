-- The least-privilege users of the README's security model, for a ClickHouse server that
-- keeps SQL users (docker-compose.yml mounts this into /docker-entrypoint-initdb.d).
-- Change the passwords, and the grants to the databases tenants may read.
CREATE USER IF NOT EXISTS sluice_tenant IDENTIFIED BY 'sluice-tenant-local';
GRANT SELECT ON default.* TO sluice_tenant;
GRANT SELECT ON system.numbers TO sluice_tenant;
GRANT SELECT ON system.numbers_mt TO sluice_tenant;
GRANT SELECT ON system.one TO sluice_tenant;
GRANT SELECT ON system.zeros TO sluice_tenant;

CREATE USER IF NOT EXISTS sluice_monitor IDENTIFIED BY 'sluice-monitor-local';
GRANT SELECT ON system.processes TO sluice_monitor;
GRANT SELECT ON system.formats TO sluice_monitor;
GRANT KILL QUERY ON *.* TO sluice_monitor;
