-- PostgreSQL hands out stream orderings and state group IDs from sequences,
-- so writers to different rooms never wait on each other for an ID.
CREATE SEQUENCE events_stream_ordering_seq;
CREATE SEQUENCE state_groups_id_seq;
