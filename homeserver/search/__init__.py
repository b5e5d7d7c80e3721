"""Search: full-text search of room events (POST /search) and the user
directory (POST /user_directory/search). See docs/search.md."""
