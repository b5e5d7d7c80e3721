-- PostgreSQL hands out state group IDs from a sequence, so writers to
-- different rooms never wait on each other for one.
CREATE SEQUENCE state_groups_id_seq;
