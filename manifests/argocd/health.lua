-- Argo CD health check for aks-kms.dev/ClusterEncryptionPolicy.
-- Install under argocd-cm key: resource.customizations.health.aks-kms.dev_ClusterEncryptionPolicy
--
-- Argo CD runs this in gopher-lua (Lua 5.1) with only base, table, package and a reduced os
-- library open: no string.* or math.* here. Tested by tests/integration/test_health_checks.py through
-- .cache/bin/argocd-lua, which opens the same libraries.
--
-- Order matters, from "is the operator's view current" to "what does it say":
--   no status yet, or status.observedGeneration behind metadata.generation -> Progressing
--   being deleted                                                           -> Progressing
--   Stalled=True, or phase Blocked/Failed (a human must act)               -> Degraded
--   phase Paused (spec.rewrite.paused)                                      -> Suspended
--   Reconciling=True (checking, updating AKS, waiting, re-encrypting)       -> Progressing
--   Ready=True                                                              -> Healthy
--   Ready=False with nothing in progress (KeyHealthy=False: disabled key) -> Degraded
--   anything else                                                           -> Progressing
local hs = {}

local function said(cond, fallback)
  if cond ~= nil and cond.message ~= nil and cond.message ~= "" then
    if cond.reason ~= nil and cond.reason ~= "" then
      return cond.reason .. ": " .. cond.message
    end
    return cond.message
  end
  if cond ~= nil and cond.reason ~= nil and cond.reason ~= "" then
    return cond.reason
  end
  return fallback
end

local status = obj.status
if status == nil or status.conditions == nil then
  hs.status = "Progressing"
  hs.message = "Waiting for aks-kms-operator to report status"
  return hs
end

local generation = obj.metadata.generation
if generation ~= nil and status.observedGeneration ~= generation then
  hs.status = "Progressing"
  hs.message = "Waiting for aks-kms-operator to observe generation " .. tostring(generation)
  return hs
end

local conds = {}
for _, c in ipairs(status.conditions) do
  if c.type ~= nil then
    conds[c.type] = c
  end
end

local phase = status.phase or ""
local summary = status.message
if summary == nil or summary == "" then
  summary = phase
end

if obj.metadata.deletionTimestamp ~= nil then
  hs.status = "Progressing"
  hs.message = "Deleting: " .. tostring(summary)
  return hs
end

local stalled = conds["Stalled"]
if (stalled ~= nil and stalled.status == "True") or phase == "Blocked" or phase == "Failed" then
  hs.status = "Degraded"
  hs.message = said(stalled ~= nil and stalled.status == "True" and stalled or nil, summary)
  return hs
end

if phase == "Paused" then
  hs.status = "Suspended"
  hs.message = summary
  return hs
end

local reconciling = conds["Reconciling"]
if reconciling ~= nil and reconciling.status == "True" then
  hs.status = "Progressing"
  hs.message = summary
  return hs
end

local ready = conds["Ready"]
if ready ~= nil and ready.status == "True" then
  hs.status = "Healthy"
  hs.message = summary
  return hs
end
if ready ~= nil and ready.status == "False" then
  hs.status = "Degraded"
  hs.message = said(ready, summary)
  return hs
end

hs.status = "Progressing"
hs.message = summary
return hs
