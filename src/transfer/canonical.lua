-- A decimal's canonical text: no leading zeros, no trailing fraction zeros,
-- no sign on zero. nil when the text is not a plain decimal.
local function canonical(text)
  if type(text) ~= 'string' then return nil end
  local sign, int, frac = string.match(text, '^%s*(%-?)(%d*)%.?(%d*)%s*$')
  if not int or (int == '' and frac == '') then return nil end
  int = string.gsub(int, '^0+', '')
  frac = string.gsub(frac, '0+$', '')
  if int == '' then int = '0' end
  if int == '0' and frac == '' then sign = '' end
  if frac ~= '' then return sign .. int .. '.' .. frac end
  return sign .. int
end
