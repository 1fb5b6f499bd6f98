"""Partner reports over the partner API key (`Authorization: Bearer <key>`, read scope is
enough); a partner sees only its own shows (see reports.py for how numbers are counted).

    GET /partner/v1/reports/sales?from=YYYY-MM-DD&to=YYYY-MM-DD&group_by=show|screen|theatre|day
        JSON, or CSV with `Accept: text/csv` or `?format=csv` (a download)
    GET /partner/v1/reports/shows/{show_id}/heatmap
"""
from __future__ import annotations

from aiohttp import web

from server.appkeys import services
from server.accounts import api_keys as auth
from server.partner import reports
from server.core.errors import ApiError
from server.core.openapi import Header, Query, operation
from server.core.wire import json_response

routes = web.RouteTableDef()
TAGS = ("partner reports",)


def _wants_csv(request: web.Request) -> bool:
    fmt = request.query.get("format", "")
    if fmt not in ("", "json", "csv"):
        raise ApiError(422, "invalid_format", "format must be json or csv", field="format")
    if fmt:
        return fmt == "csv"
    accept = request.headers.get("Accept", "")
    return "text/csv" in accept and "application/json" not in accept


@routes.get("/partner/v1/reports/sales")
@operation("GET", "/partner/v1/reports/sales",
           summary="Sales, revenue and occupancy of your shows",
           response=reports.SalesReport, errors=(401, 403, 422), tags=TAGS,
           security="partnerKey",
           params=(Query("from", description="YYYY-MM-DD, theatre-local (default today)"),
                   Query("to", description="YYYY-MM-DD inclusive (default: from)"),
                   Query("group_by", description="show | screen | theatre | day (default show)"),
                   Query("format", description="json (default) or csv"),
                   Header("Accept", description="text/csv for a CSV download")),
           description="tickets and bookings count confirmed bookings; revenue (integer "
                       "minor units) is confirmed totals plus what cancelled bookings kept "
                       "after their refund; occupancy is booked / sellable (not blocked) "
                       "seats. One row per group key and currency. At most 93 days and "
                       f"{reports.MAX_SHOWS} shows (422 too_many_shows: ask for a "
                       "shorter range).")
async def sales(request: web.Request) -> web.Response:
    redis = services(request).redis
    partner = await auth.partner_of(request, redis)
    csv_wanted = _wants_csv(request)
    report = await reports.sales_report(redis, partner, request.query.get("from"),
                                        request.query.get("to"),
                                        request.query.get("group_by", "show"))
    if not csv_wanted:
        return json_response(report)
    name = f"sales-{report.group_by}-{report.from_date}-{report.to_date}.csv"
    return web.Response(body=reports.to_csv(report).encode(), content_type="text/csv",
                        charset="utf-8",
                        headers={"Content-Disposition": f'attachment; filename="{name}"'})


@routes.get("/partner/v1/reports/shows/{show_id}/heatmap")
@operation("GET", "/partner/v1/reports/shows/{show_id}/heatmap",
           summary="Occupancy heat map of one of your shows",
           response=reports.Heatmap, errors=(401, 403, 404), tags=TAGS,
           security="partnerKey",
           description="Every seat with x/y and its status (booked, held, free, blocked), "
                       "read from Redis without waking the show's actor.")
async def heatmap(request: web.Request) -> web.Response:
    redis = services(request).redis
    partner = await auth.partner_of(request, redis)
    show_id = request.match_info["show_id"]
    return json_response(await reports.show_heatmap(redis, partner, show_id))
