"""Client-server API routes, one module per area. Each module's `register`
adds its routes; handlers parse the request, call a service, and reply."""

from __future__ import annotations

from typing import TYPE_CHECKING

from ..http import Router
from . import (
    account,
    admin,
    devices,
    directory,
    ephemeral,
    history,
    login,
    membership,
    profile,
    push,
    register,
    relations,
    reports,
    rooms,
    spaces,
    sync,
    versions,
)

if TYPE_CHECKING:
    from ..app import HomeServer


def register_client_api(router: Router, hs: "HomeServer") -> None:
    for module in (
        versions, login, register, account, devices, profile, admin,
        rooms, membership, history, relations, directory, spaces, reports, sync,
        ephemeral, push,
    ):
        module.register(router, hs)
