#!/bin/sh
# Writes the fixtures of worker::binary_rows's unit tests: 25 rows in blocks of 10 (three
# record batches or row groups, 10 + 10 + 5) with a LowCardinality column written as an
# Arrow dictionary, so the streams hold a schema, a dictionary batch and record batches.
# They were made by ClickHouse 26.9 (http://127.0.0.1:8125, started by
# scripts/services.sh ch26); the tests expect 25 rows from each.
set -eu
cd "$(dirname "$0")"
url=${CLICKHOUSE_URL:-http://127.0.0.1:8125}
settings="max_block_size=10&output_format_parquet_row_group_size=10&output_format_arrow_low_cardinality_as_dictionary=1"
query="SELECT number AS n, toString(number) AS s, toUInt8(number % 256) AS u8,
    number % 2 = 0 AS b, [number, 1] AS a, tuple(number, 'x') AS t, map('k', number) AS m,
    toNullable(number) AS nn, toFloat64(number) / 3 AS f, toDateTime64(number, 3, 'UTC') AS d,
    toLowCardinality(toString(number % 3)) AS lc, toDecimal64(number, 2) AS dec
    FROM numbers(25)"
for format in Parquet Arrow ArrowStream; do
    file=25-rows.$(echo "$format" | tr 'A-Z' 'a-z')
    curl -sf "$url/?$settings" --data-binary "$query FORMAT $format" -o "$file"
done
