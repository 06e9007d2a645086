-- Replacing one subject's digests, and the cascade on erasure, find its rows by stream.
CREATE INDEX subject_search_stream_idx ON ledger.subject_search (stream_id);
