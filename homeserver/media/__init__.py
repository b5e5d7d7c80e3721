"""The media repository (content repository): uploads, downloads, thumbnails.

`repository.MediaRepository` is the service the HTTP routes in
`homeserver/api/media.py` call; `files` keeps the bytes on disk,
`thumbnailer` makes thumbnails with Pillow, `headers` says how media is
served safely. docs/media.md describes it for operators.
"""
