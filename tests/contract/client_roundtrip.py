"""A client generated from api.yaml by openapi-python-client, used as a client developer
would: submit, wait, read the execution, download the rows. Run by scripts/contract.sh
with the generated package on PYTHONPATH; exits non-zero on any surprise."""
import json
import os
import sys
import time

from sluice_client import AuthenticatedClient
import httpx

from sluice_client.api.executions import (
    create_result_url,
    download_result,
    get_execution,
    submit_execution,
)
from sluice_client.models import ExecutionView, ResultUrlView, SubmitRequest, SubmitResponse

base, token = os.environ["SLUICE_URL"], os.environ["SLUICE_TOKEN"]
client = AuthenticatedClient(base_url=base, token=token, raise_on_unexpected_status=True)

query_id = f"contract-{time.time_ns()}"
answer = submit_execution.sync(
    client=client,
    body=SubmitRequest(sql="SELECT number, toString(number) AS s FROM system.numbers LIMIT 3", query_id=query_id),
    wait=3,
)
assert isinstance(answer, SubmitResponse), answer
execution = answer.execution
deadline = time.time() + 60
while execution.status.value in ("PENDING", "RUNNING") and time.time() < deadline:
    execution = get_execution.sync(client=client, id=execution.id, wait=3)
assert execution.status.value == "SUCCEEDED", execution
again = get_execution.sync(client=client, id=execution.id)
assert isinstance(again, ExecutionView) and again.id == execution.id, again
assert again.result.rows == 3, again.result
assert [c.name for c in again.result.columns] == ["number", "s"], again.result.columns
rows = download_result.sync_detailed(client=client, id=execution.id)
assert rows.status_code == 200, rows
lines = [json.loads(l) for l in rows.content.decode().splitlines()]
assert lines == [{"number": str(i), "s": str(i)} for i in range(3)] or lines == [
    {"number": i, "s": str(i)} for i in range(3)
], lines
# The link's body is optional: no `body=None` needed.
link = create_result_url.sync(client=client, id=execution.id)
assert isinstance(link, ResultUrlView), link
direct = httpx.get(base + link.url if link.url.startswith("/") else link.url)
assert direct.status_code == 200 and direct.content == rows.content, direct
print(f"generated client: submitted {execution.id}, read it back, downloaded {len(lines)} rows")
