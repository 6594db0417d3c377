-- Argo CD health check of CalendarUser and CalendarSync (calsync.dev), from the Ready
-- condition that calsync-operator writes. The condition counts only when both it and the
-- status describe the current metadata.generation, so an edit shows as Progressing until
-- the operator has acted on it.
local hs = { status = "Progressing", message = "Waiting for calsync-operator" }
local generation = obj.metadata and obj.metadata.generation
local status = obj.status or {}

local ready = nil
for _, condition in ipairs(status.conditions or {}) do
  if condition.type == "Ready" then
    ready = condition
  end
end
if ready == nil then
  return hs
end
if generation ~= nil and (status.observedGeneration ~= generation or ready.observedGeneration ~= generation) then
  hs.message = "Waiting for calsync-operator to act on generation " .. tostring(generation)
  return hs
end

hs.message = (ready.reason or "") .. ": " .. (ready.message or "")
if ready.status == "True" then
  hs.status = "Healthy"
elseif ready.reason == "Conflict" or ready.reason == "Unauthorized" or ready.reason == "ApiError" then
  -- These need a person: another resource owns the remote object, MyTimetable rejected the
  -- token, or MyTimetable failed or rejected a request.
  hs.status = "Degraded"
else
  -- Reconciling, WaitingForUser and Deleting pass without help.
  hs.status = "Progressing"
end
return hs
