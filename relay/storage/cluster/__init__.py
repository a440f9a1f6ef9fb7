"""Storage backends of the relay, chosen by URL (like broadcaster's): local disk, or Redis + S3 (cluster mode).

    protocols.py      the seams: journal, ingest log, job index, media store, lease
    lease.py          a lease per job in Redis (SET NX PX, renewed) with a fencing token
    fenced_stream.py  a Redis Stream whose appends are fenced by that token, ids dense `<n>-0`
    redis_journal.py  the job's journal on a fenced stream (the `relay.storage.local.store.Journal` surface)
    job_index.py      the job list, metadata and retention deadlines in Redis
    job_store.py      `relay.storage.local.store.JobStore` on those: what `relay.ingest.poller.JobPoller` runs on in cluster mode
    claims.py         keeping a job's lease alive; taking over jobs nobody holds
    follower.py       one XREAD BLOCK per replica following the journals its subscribers watch
    s3_media.py       media in an S3-compatible bucket: verified uploads, ranged reads, presigned URLs
    settings.py       cluster-mode settings (both URLs or neither), checked
    cluster.py        the Redis and S3 clients made and probed

Cluster mode is on when both `PODSTREAM_REDIS_URL` and `PODSTREAM_MEDIA_URL` are set; the local-disk
default (relay/storage/local/store.py) needs none of this package.
"""
