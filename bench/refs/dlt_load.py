"""The peer: dlt loading the same CSV into the same database, by its fastest documented path
for a file: pyarrow reads the CSV into Arrow record batches (typed), which dlt loads as
Parquet through its SQLAlchemy destination (SQLite) or as CSV through ``COPY`` (PostgreSQL).
Runs in its own virtual environment (bench/dlt_env.py).

    python dlt_load.py FILE.csv sqlite DEST.db WORKDIR
    python dlt_load.py FILE.csv postgres POSTGRES_URL WORKDIR"""

import sys

import dlt
import pyarrow as pa
import pyarrow.csv as pacsv

path, kind, target, workdir = sys.argv[1:5]
types = {
    "id": pa.int64(), "customer": pa.string(), "region": pa.string(), "qty": pa.int64(),
    "amount": pa.float64(), "paid": pa.bool_(), "day": pa.date32(), "created_at": pa.timestamp("us", tz="UTC"),
}


@dlt.resource(name="bench", write_disposition="append")
def rows():
    reader = pacsv.open_csv(path, convert_options=pacsv.ConvertOptions(column_types=types))
    for batch in reader:
        yield batch


if kind == "sqlite":
    destination = dlt.destinations.sqlalchemy(credentials=f"sqlite:///{target}")
    file_format = "parquet"
else:
    # dlt insists on a password; the bench server trusts 127.0.0.1 and ignores it.
    scheme, rest = target.split("://", 1)
    userinfo, _, hostpart = rest.rpartition("@")
    if userinfo and ":" not in userinfo:
        target = f"{scheme}://{userinfo}:unused@{hostpart}"
    destination = dlt.destinations.postgres(credentials=target)
    file_format = "csv"
pipeline = dlt.pipeline(
    pipeline_name="bench", destination=destination, dataset_name="bench", pipelines_dir=workdir
)
info = pipeline.run(rows(), loader_file_format=file_format)
info.raise_on_failed_jobs()
