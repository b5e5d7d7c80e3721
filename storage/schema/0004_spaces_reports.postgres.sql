CREATE SEQUENCE event_reports_id_seq;
CREATE SEQUENCE room_reports_id_seq;
