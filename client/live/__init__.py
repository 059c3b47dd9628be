"""Live streaming pieces of the reference live worker (`mediajobs worker
--live`): the RTMP front door that checks stream keys before any media is
accepted (rtmp.py), the ingest child that decodes once and writes an HLS
ladder (ladder.py), and a synthetic test-pattern publisher (publisher.py)."""
