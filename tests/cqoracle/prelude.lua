-- The Lua half of the cqueues differential harness (tests/cqoracle/__init__.py).
-- Loaded before every case: out() writes one JSON line per recorded call to stdout, in
-- the normalised form the Python half writes too (bytes as strings whose code points are
-- the byte values, nil as null, a trailing nil dropped, `nil, errno` as {"error": errno},
-- a thrown error as {"raised": message}, a socket as "<socket>").
local cqueues = require "cqueues"
local socket = require "cqueues.socket"
local condition = require "cqueues.condition"
local promise = require "cqueues.promise"

local function jstring(s)
	return '"' .. s:gsub('[%c"\\\128-\255]', function(c)
		return string.format("\\u%04x", c:byte())
	end) .. '"'
end

local function jvalue(v)
	local t = type(v)
	if v == nil then
		return "null"
	elseif t == "string" then
		return jstring(v)
	elseif t == "boolean" then
		return tostring(v)
	elseif t == "number" then
		if math.type(v) == "integer" then
			return tostring(v)
		end
		return string.format("%.17g", v)
	elseif t == "table" then
		if v.error ~= nil then
			return '{"error": ' .. jvalue(v.error) .. '}'
		elseif v.raised ~= nil then
			return '{"raised": ' .. jvalue(v.raised) .. '}'
		end
		local parts = {}
		for i = 1, #v do
			parts[#parts + 1] = jvalue(v[i])
		end
		return "[" .. table.concat(parts, ", ") .. "]"
	elseif socket.type(v) == "socket" then
		return '"<socket>"'
	elseif cqueues.type(v) == "controller" then
		return '"<controller>"'
	end
	return jstring(tostring(v))
end

-- The values of one call: `..., nil, errno` (cqueues' error return) becomes
-- `..., {"error": errno}`; trailing nils are dropped.
local function values(n, ...)
	local v = { ... }
	if n >= 2 and v[n - 1] == nil and math.type(v[n]) == "integer" then
		v[n - 1] = { error = v[n] }
		v[n] = nil
		n = n - 1
	end
	while n > 0 and v[n] == nil do
		n = n - 1
	end
	local parts = {}
	for i = 1, n do
		parts[i] = jvalue(v[i])
	end
	return "[" .. table.concat(parts, ", ") .. "]"
end

-- out(label, ...): record what a call returned.
function out(label, ...)
	io.stdout:write("[", jstring(label), ", ", values(select("#", ...), ...), "]\n")
	io.stdout:flush()
end

-- ok(label, ...): record only whether a call succeeded ("ok"), or its error: a call
-- fails when it returns nil or false followed by an errno.
function ok(label, first, ...)
	local n = select("#", ...)
	if not first and n > 0 then
		out(label, { error = (select(n, ...)) })
	else
		out(label, "ok")
	end
end

-- outp(label, f, ...): record f(...) or, when it throws, {"raised": message}.
function outp(label, f, ...)
	local r = table.pack(pcall(f, ...))
	if r[1] then
		out(label, table.unpack(r, 2, r.n))
	else
		out(label, { raised = tostring(r[2]) })
	end
end

-- step(label, kind, f, ...): one harness step, protected: kind "out" records what
-- f(...) returned, "ok" only whether it succeeded, "errs" its errno values (error(),
-- clearerr()); a thrown error is recorded as {"raised": message}.
function step(label, kind, f, ...)
	local r = table.pack(pcall(f, ...))
	if not r[1] then
		out(label, { raised = tostring(r[2]) })
	elseif kind == "ok" then
		ok(label, table.unpack(r, 2, r.n))
	elseif kind == "errs" then
		errs(label, table.unpack(r, 2, r.n))
	else
		out(label, table.unpack(r, 2, r.n))
	end
end

-- raw error numbers of error()/clearerr() as {"error": n}.
function errs(label, ...)
	local n = select("#", ...)
	local v = { ... }
	for i = 1, n do
		if v[i] ~= nil then
			v[i] = { error = v[i] }
		end
	end
	out(label, table.unpack(v, 1, n))
end

_G.cqueues, _G.socket, _G.condition, _G.promise = cqueues, socket, condition, promise

-- An error message without the "file:line: " position Lua puts in front.
function msg(err)
	return (tostring(err):gsub("^[^:]*:%d+: ", ""))
end
