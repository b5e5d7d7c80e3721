"""Client-server API routes, one module per area. Each module's `register`
adds its routes; handlers parse the request, call a service, and reply."""

from __future__ import annotations

from typing import TYPE_CHECKING

from ..http import Router
from . import (
    account,
    admin,
    admin_rooms,
    admin_users,
    devices,
    directory,
    ephemeral,
    history,
    keys,
    login,
    media,
    membership,
    profile,
    push,
    register,
    relations,
    reports,
    room_keys,
    rooms,
    search,
    spaces,
    sync,
    versions,
    voip,
)

if TYPE_CHECKING:
    from ..app import HomeServer


def register_client_api(router: Router, hs: "HomeServer") -> None:
    for module in (
        versions, login, register, account, devices, profile, admin,
        rooms, membership, history, relations, directory, spaces, reports, sync,
        ephemeral, push, keys, voip, room_keys, media, search,
        admin_users, admin_rooms,
    ):
        module.register(router, hs)
