-- Example saved reports for `make run` (see the README's "Reports").
-- Each `-- name:` starts a report; its tags follow; then one read statement whose
-- `{name:Type}` placeholders are the report's arguments.

-- name: numbers_between
-- description: The numbers of a range, with their squares
-- format: JSONEachRow
-- max_age: 10m
SELECT number, number * number AS square
FROM (SELECT number FROM system.numbers LIMIT 1000000)
WHERE number >= {low:UInt32} AND number < {high:UInt32}
ORDER BY number

-- name: days_of_month
-- description: Every day of the month that starts on a date, with its weekday
-- format: CSVWithNames
SELECT toDate({first:Date}) + number AS day, toDayOfWeek(day) AS weekday
FROM (SELECT number FROM system.numbers LIMIT 31)
WHERE toMonth(day) = toMonth(toDate({first:Date}))
