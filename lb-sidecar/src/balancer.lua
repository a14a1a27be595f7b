-- bluegreen's reload-free balancer, run inside nginx (lua-nginx-module with lua-resty-core).
--
-- The sidecar pushes each traffic state (active color, each pool's servers, the canary split)
-- with its etcd revision to the loopback status server; it lands in the app's lua_shared_dict.
-- Every worker keeps a decoded copy, refreshed when the dict's revision moves, and records the
-- revision it serves under its worker id: the status location answers the lowest of those, so
-- the sidecar acks a state only once every worker serves it. Nothing here is reloaded for a
-- switch, a canary weight or a host's health: the upstream is one placeholder whose every peer
-- is picked by `balance`.
--
-- Defined once per nginx in init_by_lua (the master, as root), which also loads each app's
-- last pushed state from the sidecar's state file: an nginx started while its sidecar is down
-- serves the last known state (fail static).

local ffi = require "ffi"
local cjson = require "cjson.safe"
local balancer = require "ngx.balancer"

-- nginx's own hash of split_clients: the same key lands in the same share as with a rendered
-- split_clients block. pcall: a reload re-runs this file in a master that already declared it.
pcall(ffi.cdef, "uint32_t ngx_murmur_hash2(const unsigned char *data, size_t len);")

local M = {}

-- Per worker: dict name -> { revision, state, failed = { ["ip:port"] = until }, next = { pool = i } }
local apps = {}

-- How long a server that failed an attempt is set aside in this worker (nginx's
-- max_fails=1 fail_timeout=2s of the rendered upstreams).
local FAIL_TIMEOUT = 2

local function app_of(name)
    local app = apps[name]
    if not app then
        app = { revision = -1, failed = {}, next = {} }
        apps[name] = app
    end
    return app
end

-- Brings this worker's copy up to the dict's revision, and records what it serves.
local function refresh(name)
    local dict = ngx.shared[name]
    local app = app_of(name)
    local revision = dict:get("revision")
    if revision and revision ~= app.revision then
        local state = cjson.decode(dict:get("state") or "")
        -- The state is written before its revision: a newer state under an older revision is
        -- left for the next look.
        if state and state.revision == revision then
            app.state = state
            app.revision = revision
            dict:set("worker:" .. ngx.worker.id(), revision)
        end
    end
    return app
end

-- A state the balancer can use: revision, color, and every pool a list of [ip, port].
local function check(state)
    if type(state) ~= "table" then return "not a JSON object" end
    if type(state.revision) ~= "number" or state.revision < 1 then return "revision: not a positive number" end
    if state.color ~= "blue" and state.color ~= "green" then return "color: not blue or green" end
    if type(state.pools) ~= "table" or type(state.pools.live) ~= "table" then return "pools.live: missing" end
    for pool, servers in pairs(state.pools) do
        for _, list in ipairs({ "primary", "backup" }) do
            if type(servers[list]) ~= "table" then return "pools." .. pool .. "." .. list .. ": not a list" end
            for i, server in ipairs(servers[list]) do
                if type(server[1]) ~= "string" or type(server[2]) ~= "number" then
                    return "pools." .. pool .. "." .. list .. "[" .. i .. "]: not [address, port]"
                end
            end
        end
    end
    if #state.pools.live.primary == 0 then return "pools.live.primary: empty" end
    if state.split ~= nil and state.split ~= cjson.null then
        if type(state.split.weight) ~= "number" or not state.pools.canary then
            return "split: needs a weight and pools.canary"
        end
    end
    return nil
end

-- init_by_lua: the last state the sidecar pushed, unless the dict already holds a newer one
-- (a reload keeps the dict).
function M.load(name, path)
    local file = io.open(path, "r")
    if not file then return end
    local text = file:read("*a")
    file:close()
    local state = cjson.decode(text)
    local dict = ngx.shared[name]
    if not dict or check(state) then return end
    if state.revision > (dict:get("revision") or 0) then
        dict:set("state", text)
        dict:set("revision", state.revision)
    end
end

-- init_worker_by_lua: record the served revision now and follow pushes every 2 ms, so an idle
-- worker acks too (a busy one also refreshes on each request).
function M.start_worker(names)
    local function tick(premature)
        if premature then return end
        for _, name in ipairs(names) do refresh(name) end
    end
    tick(false)
    ngx.timer.every(0.002, tick)
end

-- PUT /.bluegreen/state from the sidecar: a token only root can read (it is in this config),
-- and never an older revision than the one held.
function M.push(name, token)
    if ngx.req.get_method() ~= "PUT" then return ngx.exit(405) end
    if ngx.var.http_x_bluegreen_token ~= token then
        ngx.status = 403
        ngx.say("refused: wrong or missing X-Bluegreen-Token")
        return ngx.exit(403)
    end
    ngx.req.read_body()
    local body = ngx.req.get_body_data()
    if not body then
        local path = ngx.req.get_body_file()
        local file = path and io.open(path, "r")
        if file then body = file:read("*a"); file:close() end
    end
    local state = cjson.decode(body or "")
    local problem = check(state)
    if problem then
        ngx.status = 400
        ngx.say("refused: ", problem)
        return ngx.exit(400)
    end
    local dict = ngx.shared[name]
    local held = dict:get("revision") or 0
    if state.revision < held then
        ngx.status = 409
        ngx.say("refused: revision ", state.revision, " is older than the ", held, " served")
        return ngx.exit(409)
    end
    local ok, err = dict:set("state", body)
    if not ok then
        ngx.status = 507
        ngx.say("refused: ", err)
        return ngx.exit(507)
    end
    dict:set("revision", state.revision)
    refresh(name)
    ngx.say("ok ", state.revision)
end

-- GET /.bluegreen/status: "<revision> <color>" once every worker serves the dict's revision;
-- before that, the lowest revision a worker serves (and "-").
function M.status(name)
    local dict = ngx.shared[name]
    local revision = dict:get("revision")
    if not revision then
        ngx.status = 503
        ngx.say("no state pushed yet")
        return ngx.exit(503)
    end
    local served = revision
    for id = 0, ngx.worker.count() - 1 do
        local worker = dict:get("worker:" .. id) or 0
        if worker < served then served = worker end
    end
    local app = refresh(name)
    ngx.header.content_type = "text/plain"
    if served == revision and app.state then
        ngx.say(served, " ", app.state.color)
    else
        ngx.say(served, " -")
    end
end

-- GET /.bluegreen/connections: requests open to each color's upstreams right now, a websocket or
-- a stream for as long as it lasts.
function M.connections(name)
    local dict = ngx.shared[name]
    ngx.header.content_type = "text/plain"
    for _, color in ipairs({ "blue", "green" }) do
        ngx.say(color, " ", math.max(dict:get("open:" .. color) or 0, 0))
    end
end

-- The sticky key of a split, and whether the response sets the sticky cookie.
local function sticky_key(sticky)
    if sticky.kind == "cookie" then
        local value = ngx.var["cookie_" .. sticky.cookie]
        if value and value ~= "" then return value, nil end
        local id = ngx.var.request_id
        return id, sticky.cookie .. "=" .. id .. "; Path=/; Max-Age=2592000; SameSite=Lax"
    elseif sticky.kind == "header" then
        local value = ngx.var["http_" .. sticky.header]
        if value and value ~= "" then return value, nil end
    end
    return ngx.var.remote_addr, nil
end

-- access_by_lua: which pool serves this request (the public server: the live color or the
-- canary's share; the preview server: the idle color), named in the response headers.
function M.route(name, role)
    local app = refresh(name)
    local state = app.state
    if not state then
        ngx.status = 503
        ngx.say("bluegreen: no traffic state yet")
        return ngx.exit(503)
    end
    local pool = role
    local split = state.split
    if role == "live" and split and split ~= cjson.null and split.weight > 0 then
        if split.weight >= 10000 then
            pool = "canary"
        else
            local key, cookie = sticky_key(split.sticky)
            local hash = tonumber(ffi.C.ngx_murmur_hash2(key, #key))
            -- The canary takes the bottom of the hash range, as split_clients does.
            if hash < math.floor(split.weight * 4294967295 / 10000) then pool = "canary" end
            ngx.ctx.bluegreen_cookie = cookie
        end
    end
    local servers = state.pools[pool]
    if not servers then
        ngx.status = 502
        return ngx.exit(502)
    end
    ngx.ctx.bluegreen = { name = name, pool = pool, servers = servers, color = servers.color, tried = {} }
    ngx.var.bluegreen_color = servers.color
    if role == "live" then ngx.var.bluegreen_revision = app.revision end
end

-- The next server of the pool: round robin over the primaries this worker has not set aside,
-- then the backups (every registered host, never set aside), never one this request tried.
local function pick(app, ctx, now)
    local servers = ctx.servers
    local primary = servers.primary
    local n = #primary
    local start = app.next[ctx.pool] or 1
    for i = 0, n - 1 do
        local index = (start + i - 1) % n + 1
        local server = primary[index]
        local id = server[1] .. ":" .. server[2]
        if not ctx.tried[id] and (app.failed[id] or 0) <= now then
            app.next[ctx.pool] = index % n + 1
            return server, id, true
        end
    end
    for _, server in ipairs(servers.backup) do
        local id = server[1] .. ":" .. server[2]
        if not ctx.tried[id] then return server, id, false end
    end
    for _, server in ipairs(primary) do
        local id = server[1] .. ":" .. server[2]
        if not ctx.tried[id] then return server, id, true end
    end
    local server = primary[1] or servers.backup[1]
    return server, server and (server[1] .. ":" .. server[2]), true
end

-- balancer_by_lua: each attempt's peer. A failed attempt (connect error, timeout, 502/503 as
-- proxy_next_upstream says) sets its primary aside and is retried on the next server of the
-- same color, up to proxy_next_upstream_tries.
function M.balance(name)
    local ctx = ngx.ctx.bluegreen
    if not ctx then return ngx.exit(500) end
    local app = app_of(name)
    local now = ngx.now()
    if ctx.last then
        if ctx.last_primary then app.failed[ctx.last] = now + FAIL_TIMEOUT end
    else
        balancer.set_more_tries(2)
        if ctx.color then
            ngx.shared[name]:incr("open:" .. ctx.color, 1, 0)
            ctx.counted = ctx.color
        end
    end
    local server, id, primary = pick(app, ctx, now)
    if not server then return ngx.exit(502) end
    ctx.tried[id] = true
    ctx.last, ctx.last_primary = id, primary
    local ok, err = balancer.set_current_peer(server[1], server[2])
    if not ok then
        ngx.log(ngx.ERR, "bluegreen: peer ", id, ": ", err)
        return ngx.exit(502)
    end
end

-- header_filter_by_lua: the sticky cookie for a client that had none while a split runs.
function M.header()
    local cookie = ngx.ctx.bluegreen_cookie
    if not cookie then return end
    local existing = ngx.header["Set-Cookie"]
    if type(existing) == "table" then
        table.insert(existing, cookie)
        ngx.header["Set-Cookie"] = existing
    elseif existing then
        ngx.header["Set-Cookie"] = { existing, cookie }
    else
        ngx.header["Set-Cookie"] = cookie
    end
end

-- log_by_lua: the request (or websocket) is over; it no longer holds its color.
function M.done(name)
    local ctx = ngx.ctx.bluegreen
    if ctx and ctx.counted then ngx.shared[name]:incr("open:" .. ctx.counted, -1, 0) end
end

return M
