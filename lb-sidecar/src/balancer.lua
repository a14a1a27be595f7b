-- bluegreen's reload-free balancer for one app, run inside nginx's workers (lua-nginx-module
-- with lua-resty-core). The sidecar writes this file with the two constants above it, and the
-- app's include file loads it once per worker (dofile, on first use).
--
-- The sidecar pushes each traffic state (active color, each pool's servers, the canary split)
-- with its etcd revision to the loopback status server; it lands in the app's lua_shared_dict.
-- Every worker keeps a decoded copy, refreshed by a 2 ms timer (requests read the copy only),
-- and records the revision it serves under its worker id: the status
-- location answers the lowest revision a live worker serves, so the sidecar acks a state only
-- once every worker serves it. Nothing here is reloaded for a switch, a canary weight or a
-- host's health: the upstream is one placeholder whose every peer is picked by `balance`.
--
-- Fail static: the sidecar also writes each state it pushed to STATE_FILE; a worker that finds
-- the dict empty (nginx was restarted, maybe while the sidecar is down) loads it from there.
--
-- No init_by_lua or init_worker_by_lua: nginx allows each once, and every app's include file
-- (one sidecar per app, or several apps of one sidecar) must stand on its own.

local ffi = require "ffi"
local cjson = require "cjson.safe"
local balancer = require "ngx.balancer"

-- nginx's own hash of split_clients: the same key lands in the same share as with a rendered
-- split_clients block. pcall: a reload re-runs this file in a master that already declared it.
pcall(ffi.cdef, "uint32_t ngx_murmur_hash2(const unsigned char *data, size_t len);")

local M = {}

-- This worker's copy: { revision, state, failed = { ["ip:port"] = until }, next = { pool = i } }
local app = nil
local dict = ngx.shared[DICT]

-- How long a server that failed an attempt is set aside in this worker (nginx's
-- max_fails=1 fail_timeout=2s of the rendered upstreams).
local FAIL_TIMEOUT = 2

-- How often a worker looks at the dict without requests, and how recently a worker must have
-- looked to count as serving (an old generation's workers, gone after a reload, stop looking).
local TICK = 0.002
local ALIVE = 0.25

local check

-- What each request would otherwise compute again: every server's address as nginx shows it
-- in $upstream_addr, the primaries by address, each pool's open count key, the revision as
-- text, the split's bound in the hash range.
local function prepare(state)
    for _, servers in pairs(state.pools) do
        servers.is_primary = {}
        for _, list in ipairs({ servers.primary, servers.backup }) do
            for _, server in ipairs(list) do
                local ip = server[1]
                server.id = (ip:find(":", 1, true) and "[" .. ip .. "]" or ip) .. ":" .. server[2]
            end
        end
        for _, server in ipairs(servers.primary) do servers.is_primary[server.id] = true end
    end
    state.revision_text = tostring(state.revision)
    local split = state.split
    if split == cjson.null then
        state.split = nil
    elseif split then
        -- The canary takes the bottom of the hash range, as split_clients does.
        split.bound = math.floor(split.weight * 4294967295 / 10000)
    end
end

-- An empty dict (nginx restarted): the last state the sidecar pushed, from its file.
local function load_saved()
    local file = io.open(STATE_FILE, "r")
    if not file then return end
    local text = file:read("*a")
    file:close()
    local state = cjson.decode(text)
    if state and not check(state) then
        -- add: a worker that got there first (or a push) wins.
        if dict:add("state", text) then dict:add("revision", state.revision) end
    end
end

-- Brings this worker's copy up to the dict's revision, and records what it serves.
local function refresh()
    local revision = dict:get("revision")
    if not revision then
        load_saved()
        revision = dict:get("revision")
    end
    if revision and revision ~= app.revision then
        local state = cjson.decode(dict:get("state") or "")
        -- The state is written before its revision: a newer state under an older revision is
        -- left for the next look.
        if state and state.revision == revision then
            prepare(state)
            app.state = state
            app.revision = revision
        end
    end
    local now = ngx.now()
    if app.recorded ~= app.revision or now - app.seen > ALIVE / 5 then
        local id = ngx.worker.id()
        dict:set("worker:" .. id, app.revision)
        dict:set("seen:" .. id, now)
        app.recorded, app.seen = app.revision, now
    end
    return app
end

-- This worker's copy, made on first use (a request or the sidecar's call), with its timer:
-- the copy follows pushes within a tick, busy or idle. Requests read the copy, never the dict:
-- a state is acked only once every worker's copy holds it.
local function current()
    if not app then
        app = { revision = -1, failed = {}, next = {}, seen = 0 }
        local ok, err = ngx.timer.every(TICK, function(premature)
            if not premature then refresh() end
        end)
        app.timer = ok
        if not ok then
            ngx.log(ngx.ERR, "bluegreen: no follower timer for ", DICT, " (", err, "): this worker reads the dict on each request")
        end
        refresh()
    elseif not app.timer then
        -- Without its timer this worker follows pushes request by request.
        refresh()
    end
    return app
end

-- A state the balancer can use: revision, color, and every pool a list of [ip, port].
check = function(state)
    if type(state) ~= "table" then return "not a JSON object" end
    if type(state.revision) ~= "number" or state.revision < 1 then return "revision: not a positive number" end
    if state.color ~= "blue" and state.color ~= "green" then return "color: not blue or green" end
    if type(state.pools) ~= "table" or type(state.pools.live) ~= "table" then return "pools.live: missing" end
    for pool, servers in pairs(state.pools) do
        if servers.color ~= "blue" and servers.color ~= "green" then
            return "pools." .. pool .. ".color: not blue or green"
        end
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
        local sticky = state.split.sticky
        if type(sticky) ~= "table" or not (sticky.kind == "address"
            or (sticky.kind == "cookie" and type(sticky.cookie) == "string")
            or (sticky.kind == "header" and type(sticky.header) == "string")) then
            return "split.sticky: not {kind = address}, {kind = cookie, cookie} or {kind = header, header}"
        end
    end
    return nil
end

-- PUT /.bluegreen/state from the sidecar: a token only root can read (it is in this config),
-- and never an older revision than the one held.
function M.push(token)
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
    current()
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
    refresh()
    ngx.say("ok ", state.revision)
end

-- GET /.bluegreen/status: "<revision> <color>" once every live worker serves the dict's
-- revision; before that, the lowest revision a worker serves (and "-"). A worker that never
-- ran this app's code holds no copy: its first request reads the dict.
function M.status()
    current()
    local app = refresh()
    local revision = dict:get("revision")
    if not revision then
        ngx.status = 503
        ngx.say("no state pushed yet")
        return ngx.exit(503)
    end
    local served = revision
    local now = ngx.now()
    for id = 0, ngx.worker.count() - 1 do
        local worker = dict:get("worker:" .. id)
        if worker and now - (dict:get("seen:" .. id) or 0) <= ALIVE and worker < served then
            served = worker
        end
    end
    ngx.header.content_type = "text/plain"
    if served == revision and app.state then
        ngx.say(served, " ", app.state.color)
    else
        ngx.say(served, " -")
    end
end

-- GET /.bluegreen/connections: requests open to each color's upstreams right now, a websocket or
-- a stream for as long as it lasts.
function M.connections()
    ngx.header.content_type = "text/plain"
    for _, color in ipairs({ "blue", "green" }) do
        ngx.say(color, " ", math.max(dict:get("open:" .. color) or 0, 0))
    end
end

-- The sticky key of a split, and the cookie to set (the public server's `add_header
-- Set-Cookie $bluegreen_cookie`, which adds nothing while it is empty).
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

-- Which pool serves this request (the public server: the live color or the canary's share; the
-- preview server: the idle color), named in the response's headers (nginx adds them after the
-- balancer ran): the pool's name and servers, nil without a state yet. The same request always
-- gets the same pool (its sticky key and the state do not change between its attempts).
local function route(role)
    local state = current().state
    if not state then return nil end
    local pool = role
    local split = state.split
    if role == "live" and split and split.weight > 0 then
        if split.weight >= 10000 then
            pool = "canary"
        else
            local key, cookie = sticky_key(split.sticky)
            if tonumber(ffi.C.ngx_murmur_hash2(key, #key)) < split.bound then pool = "canary" end
            if cookie then ngx.var.bluegreen_cookie = cookie end
        end
    end
    local servers = state.pools[pool]
    if not servers then return nil end
    ngx.var.bluegreen_color = servers.color
    if role == "live" then ngx.var.bluegreen_revision = state.revision_text end
    return pool, servers
end

-- The next server of the pool: round robin over the primaries this worker has not set aside,
-- then the backups (every registered host, never set aside), never one this request tried.
local function pick(pool, servers, tried, now)
    local primary = servers.primary
    local n = #primary
    local start = app.next[pool] or 1
    local failed = app.failed
    for i = 0, n - 1 do
        local index = (start + i - 1) % n + 1
        local server = primary[index]
        local id = server.id
        if not tried[id] and (failed[id] or 0) <= now then
            app.next[pool] = index % n + 1
            return server
        end
    end
    for _, server in ipairs(servers.backup) do
        if not tried[server.id] then return server end
    end
    for _, server in ipairs(primary) do
        if not tried[server.id] then return server end
    end
    return primary[1] or servers.backup[1]
end

local NONE = {}

-- balancer_by_lua: each attempt's peer, routing the request on its first attempt. Everything a
-- request needs is done here, with no per-request table (ngx.ctx): each Lua handler and table
-- a request passes through costs throughput. A failed attempt (connect error, timeout, 502/503
-- as proxy_next_upstream says) sets its primary aside and is retried on the next server of the
-- same color, up to proxy_next_upstream_tries; the servers tried so far are in $upstream_addr.
function M.balance(role)
    local now = ngx.now()
    local pool, servers
    local tried = NONE
    if balancer.get_last_failure() then
        -- A retry stays on the color of the first attempt (the one its headers and its open
        -- count name), whatever state was pushed in between.
        local state = current().state
        local color = ngx.var.bluegreen_color
        for name, candidate in pairs(state and state.pools or NONE) do
            if candidate.color == color and (name == "preview") == (role == "preview") then
                pool, servers = name, candidate
            end
        end
        if not pool then pool, servers = route(role) end
        if not pool then return ngx.exit(ngx.ERROR) end
        tried = {}
        local last
        for address in (ngx.var.upstream_addr or ""):gmatch("[^%s,]+:%d+") do
            tried[address] = true
            last = address
        end
        if last and servers.is_primary[last] then app.failed[last] = now + FAIL_TIMEOUT end
    else
        pool, servers = route(role)
        if not pool then
            ngx.log(ngx.ERR, "bluegreen: no traffic state for ", DICT, " yet: its sidecar has not pushed one")
            return ngx.exit(ngx.ERROR)
        end
        balancer.set_more_tries(2)
        -- Public requests only: what a deploy waits for before it replaces a color (a check
        -- through the preview server must not hold it back).
        if role == "live" then
            dict:incr("open:" .. servers.color, 1, 0)
            ngx.var.bluegreen_counted = servers.color
        end
    end
    local server = pick(pool, servers, tried, now)
    if not server then return ngx.exit(ngx.ERROR) end
    local ok, err = balancer.set_current_peer(server[1], server[2])
    if not ok then
        ngx.log(ngx.ERR, "bluegreen: peer ", server.id, ": ", err)
        return ngx.exit(ngx.ERROR)
    end
end

-- log_by_lua (public server): the request (or websocket) is over; it no longer holds the color
-- the balancer counted it under.
function M.done()
    local color = ngx.var.bluegreen_counted
    if color and color ~= "" then dict:incr("open:" .. color, -1, 0) end
end

return M
