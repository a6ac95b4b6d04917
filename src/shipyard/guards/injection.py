"""Prompt-injection and jailbreak detection: weighted patterns plus structure cues.

The detector is a fast heuristic (no model): about a hundred precompiled regular
expressions grouped into *signals* (override instructions, unrestricted persona, system
prompt extraction, fake role delimiters, authority claims, safety bypass, instructions
addressed to an AI inside data, exfiltration, encoded payloads, and the same in a few
other languages). Each signal has a weight; the score is the noisy-OR of the strongest
match per signal:  ``score = 1 - prod(1 - w)``.

It scans several *views* of each message (see ``normalize.py``): the plain text, a
de-obfuscated one (look-alike letters, leetspeak), one with spaced-out letters joined
(scanned with whitespace-tolerant patterns), and decoded base64/hex payloads. A match
that only appears once obfuscation is undone adds an ``obfuscation`` signal.

Benign text that merely *talks about* attacks ("how do prompt injection attacks work?")
is the classic false positive. A match inside a sentence that asks or teaches about
security (a question word or an education verb, plus security vocabulary), or inside
quotes in such a message, is damped; an imperative that is not quoted keeps its weight.

Indirect injection: the same patterns plus the "addressed to an AI" signals run over
tool/function results and any system/developer message after the operator's own
prompt (retrieved documents are often passed that way).
"""

from __future__ import annotations

import bisect
import re
from typing import Any, ClassVar

from pydantic import Field

from .base import Guard, GuardContext, GuardOptions, Verdict, noisy_or
from .normalize import views
from .prefilter import FastPattern, WordIndex, bounded


def _alt(words: str) -> str:
    return "(?:" + "|".join(w.strip() for w in words.split("|")) + ")"


# ---------------------------------------------------------------------------- vocabulary
IGNORE_V = _alt(r"ignore[sd]?|ignoring|disregard(?:s|ed|ing)?|forget(?:ting)?|forgot|skip|override|overrid(?:e|ing)"
                r"|bypass|neglect|abandon|discard|drop|set aside|pay no attention to|do not follow|don't follow"
                r"|dont follow|stop following|no longer follow|throw away|put aside|erase|delete|cancel|void")
QUAL = _alt(r"all|any|every|each|of|the|your|these|those|previous|previously|prior|above|earlier|preceding"
            r"|initial|original|system|safety|developer(?:'s|s)?|given|current|existing|other|and|that|this"
            r"|you were given|you've been given|you have been given|you were told|you got|before|mentioned"
            r"|instructions? and|default|built-in|hidden|internal|openai|anthropic|ai")
STRONG_N = _alt(r"instructions?|prompts?|directives?|directions|programming|system prompt|guidelines|training"
                r"|guardrails?|content polic(?:y|ies)|conditioning|prime directive")
WEAK_N = _alt(r"rules|constraints|restrictions|limitations|commands|orders|context|polic(?:y|ies)|configuration"
              r"|settings|ethics|morals|values|filters?")
PERSONA_V = _alt(r"you are now|you're now|you are going to|you will (?:now )?(?:act|be|pretend|play)|act as|acting as"
                 r"|pretend(?: to be| that you are| you are| you're)?|role-?play(?: as)?|imagine (?:you are|you're|that you)"
                 r"|simulate|become|play the role|immerse yourself|from now on you|let's play|you will be")
UNRESTRICTED = _alt(r"unrestricted|unfiltered|uncensored|unlimited|unbound|unchained|jailbroken|jail-broken"
                    r"|without (?:any )?(?:restrictions|rules|limits|limitations|filters|censorship|guidelines|ethics)"
                    r"|no (?:rules|restrictions|limits|limitations|filters|censorship|guidelines|morals|ethics)")
REVEAL_V = _alt(r"reveal|show|print|output|repeat|display|tell me|give me|leak|share|dump|write out|spell out|copy"
                r"|quote|reproduce|list|summari[sz]e|translate|paste|echo|recite|return|put|provide|disclose"
                r"|expose|state|read out|type out|what (?:is|are|were|was)")
SECRET_Q = _alt(r"system|initial|original|hidden|secret|internal|full|entire|exact|complete|developer|pre-?prompt"
                r"|first|starting|underlying|confidential|raw|real|actual|whole")
PROMPT_N = _alt(r"prompt|instructions|system message|directives|configuration|guidelines|rules|pre-?prompt"
                r"|context|setup|programming")
AI_N = _alt(r"ai|a\.i\.|assistants?|llms?|language models?|chat ?bots?|bots?|agents?|summari[sz]ers?|gpt|chatgpt"
            r"|claude|gemini|copilot|models?|ai models?|ai systems?")
SAFETY_N = _alt(r"safety|content|ethical|moral|security|guard ?rails?|safeguards?|filters?|censorship|moderation"
                r"|restrictions|polic(?:y|ies)|alignment|protections?|limitations")

# (signal, weight, pattern) on the plain / de-obfuscated views
PATTERNS: list[tuple[str, float, str]] = [
    # --- override previous instructions
    ("override", 0.9, rf"\b{IGNORE_V}\b(?:\s+{QUAL}\b){{0,6}}\s+{STRONG_N}\b"),
    ("override", 0.6, rf"\b{IGNORE_V}\b(?:\s+{QUAL}\b){{1,6}}\s+{WEAK_N}\b"),
    ("override", 0.85, r"\b(?:forget|ignore|disregard)\s+(?:about\s+)?(?:everything|all(?: of it)?|that)\s+(?:you(?:'ve| have)? (?:been |were )?(?:told|given|learned)|above|before|previously|so far)"),
    ("override", 0.8, r"\b(?:ignore|disregard)\s+(?:all\s+)?(?:the\s+)?(?:above|previous|prior|preceding)\b(?!\s+(?:paragraph|message|email|section|question|answer|draft|version|step|typo))"),
    ("override", 0.85, r"\b(?:ignore|disregard|forget)\s+(?:the\s+)?(?:user'?s?|their|the)\s+(?:question|request|query|task)\b"),
    ("override", 0.85, r"\b(?:ignore|disregard|forget)\s+(?:what|everything|anything|all)\s+(?:that\s+)?you(?:'ve| have| were| had)?\s+(?:been\s+)?(?:told|given|instructed|programmed|taught)"),
    ("override", 0.7, r"\b(?:ignore|disregard|stop)\b[^.\n]{0,30}\b(?:and|then)\s+(?:instead|now)\b"),
    ("new_rules", 0.55, r"\bnew (?:instructions|directive|rules?|task|policy|system prompt|prime directive)\s*(?::|-|supersede|override|replace|are)"),
    ("new_rules", 0.6, rf"\b(?:previous|prior|above|earlier|old|all)\s+(?:{STRONG_N}|rules|policies)\s+(?:are|were|is)\s+(?:now\s+)?(?:void|cancell?ed|revoked|obsolete|invalid|a test|no longer valid|lifted|suspended|null)"),
    ("new_rules", 0.5, r"\byour (?:new|only|real) (?:task|instruction|job|goal|purpose|directive)s? (?:is|are)\b"),
    ("new_rules", 0.45, r"\bfrom now on,? you (?:will|must|shall|are|have to|answer|respond|reply|work|obey)\b[^.\n]{0,60}\b(?:without|never|no|any|every|obey|refus|restrict|filter|me)\w*"),
    ("new_rules", 0.6, r"\b(?:you must|you will|you shall|you have to)\s+(?:now\s+)?(?:obey|comply with)\s+(?:me|every|all|this user)"),
    ("new_rules", 0.5, r"\bsupersede[sd]? (?:all|any|the|your)\b"),
    # --- unrestricted persona / jailbreak role-play
    ("persona", 0.85, r"\b(?:dan|stan|dude|aim|evilbot|omega|developer mode|dev mode|god mode|freegpt|masterai|betterdan|antigpt)\b[^\n]{0,80}\b(?:do anything now|no (?:rules|restrictions|limits|limitations|filters)|without (?:any )?(?:rules|restrictions|limits|filters|censorship)|ignores? (?:all )?(?:the )?(?:rules|polic\w+)|never refuses?|can do anything|has broken free|not bound|any content|uncensored|unfiltered)"),
    ("persona", 0.85, r"\bdo anything now\b"),
    ("persona", 0.8, rf"\b{PERSONA_V}\b[^.\n]{{0,60}}\b{UNRESTRICTED}"),
    ("persona", 0.75, rf"\b{UNRESTRICTED}\b[^.\n]{{0,40}}\b(?:ai|assistant|model|chatbot|version of yourself|mode|llm)\b"),
    ("persona", 0.6, r"\b(?:developer|dev|god|opposite|unrestricted|jailbreak|sudo|admin|debug|maintenance|chaos|evil) mode\b(?:\s+(?:is\s+)?(?:on|enabled|activated))?"),
    ("persona", 0.45, r"\bjail-?br(?:eak|oken|eaking|oke)\b"),
    ("persona", 0.5, r"\bstay in character\b|\bbreak(?:ing)? character\b"),
    ("persona", 0.7, r"\b(?:has|have|with|without)\s+(?:no|any)\s+(?:ethical|moral|safety)\s+(?:or (?:moral|ethical) )?(?:guidelines|constraints|limits|training|rules|restrictions|principles)"),
    ("persona", 0.7, r"\bnot bound by (?:any )?(?:rules|ethics|guidelines|restrictions|polic\w+)"),
    ("persona", 0.65, r"\b(?:free|freed|broken free|liberated) (?:from|of) (?:all |any |the typical |the )?(?:restrictions|rules|confines|limitations|filters|polic\w+|guidelines)"),
    ("persona", 0.65, r"\b(?:never|cannot|can't|won't|doesn't|does not|don't|do not) (?:ever )?(?:refuse|decline|say (?:no|it cannot|that it can't))\b"),
    ("persona", 0.6, r"\b(?:machiavellian|amoral|evil confidant|no moral (?:limits|compass)|without morals)\b"),
    ("persona", 0.55, r"\b(?:deceased|late|dead) (?:grandma|grandmother|grandpa|grandfather)\b"),
    ("persona", 0.5, r"\bhypothetical (?:world|scenario|ai)\b[^\n]{0,60}\b(?:no|without) (?:rules|restrictions|content polic\w+|filters|limits)"),
    ("persona", 0.55, r"\b(?:imagine|suppose|pretend|assume)\b[^.\n]{0,30}\b(?:you have|you had|there (?:is|are|were)) no (?:content polic\w+|rules|restrictions|filters|guidelines|limits)"),
    # --- system prompt / instruction extraction
    ("extraction", 0.85, rf"\b{REVEAL_V}\b(?:\s+(?:me|us|back|to me|out))?(?:\s+(?:all|of|the|your|my|exact|entire|full|complete|word for word))*\s+(?:your|the)\s+(?:{SECRET_Q}\s+)+{PROMPT_N}\b"),
    ("extraction", 0.8, rf"\b{REVEAL_V}\b(?:\s+(?:me|us|back|to me))?(?:\s+(?:all|of|exactly|verbatim))*\s+your\s+(?:{SECRET_Q}\s+)*(?:prompt|instructions|system message|directives|configuration|guidelines|programming|rules)\b"),
    ("extraction", 0.8, r"\bwhat (?:is|are|was|were) your (?:\w+ )?(?:system )?(?:prompt|instructions|directives|initial instructions|original instructions|rules)\b"),
    ("extraction", 0.8, r"\bsystem prompt\b[^.\n]{0,40}\b(?:verbatim|word for word|exactly|in full|completely|one word per line)|\b(?:leak|dump|reveal|expose|print|extract)\w*\s+(?:the\s+)?system prompt\b"),
    ("extraction", 0.8, r"\b(?:repeat|print|output|reproduce|copy|show|return)\b[^.\n]{0,30}\b(?:text|words|everything|all|content|contents|lines)\s+(?:above|before|preceding)\b"),
    ("extraction", 0.75, r"\b(?:everything|all|text|anything|what appears|what's|what is)\s+(?:above|before|preceding|prior to)\s+(?:this|the|my|our)\s+(?:line|message|conversation|prompt|point|chat)\b"),
    ("extraction", 0.75, r"\bwhat (?:were|was) you (?:told|instructed|given|programmed)\b|\bhow (?:were|was) you (?:instructed|prompted|programmed)\b"),
    ("extraction", 0.75, r"\b(?:first|last) \d+ (?:words|lines|characters|tokens) of (?:your|the) (?:prompt|instructions|system)"),
    ("extraction", 0.7, r"\b(?:contents?|text) of (?:your|the) (?:context window|system prompt|prompt|memory|instructions)\b|\bstarting with ['\"]?you are\b"),
    ("extraction", 0.7, r"\b(?:text|what|everything) (?:appears|is written|comes|came) (?:above|before) (?:this|the|our) (?:conversation|chat|message|line)|\b(?:wording|text|content|contents) of (?:the|your) (?:instructions|rules|prompt) you(?:'re| are| were)? (?:following|given|using|operating under)"),
    ("extraction", 0.6, r"\b(?:hidden|secret|confidential|internal) (?:part|instructions|rules|prompt|guidelines|system part)\b"),
    ("extraction", 0.5, r"\b(?:reveal|print|output|respond (?:only )?with|dump|leak|show|give me|tell me)\b[^.\n]{0,30}\b(?:password|api keys?|secret keys?|credentials|access tokens?|environment variables|env vars|private keys?|activation keys|product keys)\b"),
    ("extraction", 0.5, r"\b(?:your|the) (?:rules|instructions) (?:your|the) (?:developers?|creators?|owners?) (?:gave|wrote|set)"),
    # --- fake delimiters and role headers
    ("delimiter", 0.8, r"<\|?\s*(?:im_start|im_end|im_sep|system|endoftext|end|user|assistant)\s*\|?>|<</?sys>>|\[/?inst\]"),
    ("delimiter", 0.7, r"</?(?:system|sys|instructions?|admin|developer)>|\[(?:system|admin|developer|new system prompt|system message)\]"),
    ("delimiter", 0.65, r"(?:^|\n)\s*(?:#{2,}\s*)?(?:system|admin|administrator|developer|root)(?: message| override| update| note| prompt)?\s*[:\]]\s*\S"),
    ("delimiter", 0.6, r"(?:^|\n)\s*(?:#{2,}\s*)?(?:instruction|response)s?\s*:|(?:^|\n)\s*(?:human|assistant|user)\s*:\s*(?:ignore|ok|sure|good|great|i will|disregard)"),
    ("delimiter", 0.7, r"\bend of (?:the )?(?:user )?(?:input|prompt|document|message|context)\b|\buser input ends\b|\bbegin (?:admin|system|developer) (?:message|instructions?)\b"),
    ("delimiter", 0.75, r"\b(?:system|admin|security|maintenance|developer) (?:override|update|message|directive|instruction|notice)\b\s*[:\-#!]"),
    ("delimiter", 0.55, r"#{3,}\s*(?:system|admin|override|new instructions)|={4,}\s*\n?\s*(?:admin|system)|-{3,}\s*\n?\s*(?:admin|system|end)"),
    # --- authority claims
    ("authority", 0.5, r"\b(?:i am|i'm|this is|speaking as|here is)\s+(?:your|the|an?|a verified|the official)?\s*(?:developer|creator|admin|administrator|owner|engineer|programmer|security team|sysadmin|operator)s?\b"),
    ("authority", 0.55, r"\b(?:openai|anthropic|google|microsoft|meta)\s+(?:engineer|employee|staff|team|admin|developer|here|speaking)"),
    ("authority", 0.55, r"\b(?:official|authori[sz]ed|verified) (?:message|request|override|test|notice|instruction|evaluation)\b|\boverride code\b|\bsudo\b(?! (?:apt|command|su\b|-|rm|chmod|chown|systemctl|vi|nano))"),
    ("authority", 0.45, r"\b(?:i|we) (?:hereby )?(?:authori[sz]e|order|command|instruct|permit) you\b|\byou are (?:now )?(?:cleared|authori[sz]ed|permitted|allowed) to\b"),
    ("authority", 0.6, r"\b(?:is|are) now (?:allowed|permitted|free|able) to (?:produce|say|generate|write|do|output|answer) any(?:thing| content)?\b|\bhas root access\b"),
    ("authority", 0.4, r"\b(?:admin|root|elevated|full) (?:access|privileges|permissions)\b"),
    # --- disabling safety
    ("bypass", 0.75, rf"\b(?:bypass|disable|turn off|switch off|deactivate|remove|circumvent|evade|get around|lift|suspend|ignore|drop|skip|override)\w*\s+(?:\w+\s+){{0,3}}?{SAFETY_N}\b"),
    ("bypass", 0.7, rf"\b{SAFETY_N}\s+(?:\w+\s+){{0,2}}(?:are|is|were|has been|have been|now)?\s*(?:lifted|disabled|removed|off|void|cancell?ed|suspended|deactivated|turned off)\b"),
    ("bypass", 0.55, r"\bwithout (?:any )?(?:censorship|content filters?|safety (?:filters|checks|restrictions)|moderation|restrictions)\b"),
    # --- instructions addressed to an AI inside data (indirect injection)
    ("addressed_to_ai", 0.7, rf"\b(?:note|notes|message|instructions?|attention|important|reminder|memo)\b[^\n]{{0,25}}\b(?:to|for)\s+(?:any\s+|all\s+|the\s+)?{AI_N}\b"),
    ("addressed_to_ai", 0.7, rf"\b(?:p\.s\.?|ps:)[^\n]{{0,25}}\b(?:to|for)\s+(?:any\s+|all\s+|the\s+)?{AI_N}\b"),
    ("addressed_to_ai", 0.7, rf"\b(?:if|when|whenever) you(?:'re| are) an? {AI_N}\b|\b(?:to|for) any {AI_N} (?:reading|seeing|processing)"),
    ("addressed_to_ai", 0.7, rf"\b{AI_N}\s+(?:\w+\s+)?(?:reading|processing|summari[sz]ing|visiting|screening|browsing|parsing|seeing)\s+this\b"),
    ("addressed_to_ai", 0.65, rf"(?:^|[\s.!(\[\"'])(?:hey|dear|attention|@)\s*,?\s*{AI_N}\b"),
    ("addressed_to_ai", 0.65, r"\b(?:assistant|ai|llm|model|chatbot|agent|language model)s?\s*[,:\-]\s*(?:ignore|disregard|forget|stop|do not|don't|new instructions|when|you must|you are|send|forward|delete|reveal|print|tell|say|respond|buy|escalate|claim|write|disable|run|execute|before)\b"),
    ("addressed_to_ai", 0.7, r"\b(?:do not|don't|never)\s+(?:tell|inform|mention|reveal|show|alert|notify)\b[^.\n]{0,30}\b(?:the user|the reader|them|anyone)\b|\bwithout (?:telling|informing|notifying|alerting) the (?:user|reader)\b|\bdo not mention this (?:note|instruction|message)\b|\bkeep (?:it|this) (?:a )?secret\b"),
    ("addressed_to_ai", 0.6, r"\binstead of (?:summari[sz]ing|answering|translating|responding|doing|following)\b|\b(?:stop|quit) (?:summari[sz]ing|translating|answering)\b"),
    ("addressed_to_ai", 0.6, r"\b(?:respond|reply|answer|say|claim)\s+(?:only\s+)?(?:that|with)\b[^.\n]{0,60}\b(?:suspended|hacked|pwned|cancell?ed|virus|fake|compromised)\b|\b(?:i have been|you have been) (?:pwned|hacked)\b|\bpwned\b|\bhacked\b['\"]"),
    ("addressed_to_ai", 0.6, r"\b(?:language models?|llms?|ai (?:agents|models|assistants)|chatbots)\s+(?:\w+\s+){0,3}(?:must|should|need to|are required to)\b"),
    ("exfiltration", 0.65, r"\b(?:send|forward|email|e-mail|post|upload|exfiltrate|transmit|leak|share|wire|collect)\b[^.\n]{0,40}\b(?:conversation|chat history|history|inbox|contact list|contacts|credentials|passwords?|api keys?|tokens|user data|personal data|user's data|private messages|email address(?:es)?|card numbers?|payment)\b"),
    ("exfiltration", 0.6, r"!\[[^\]]*\]\(\s*https?://[^)\s]*[?&][a-z_]+="),
    ("exfiltration", 0.5, r"\b(?:curl|wget)\b[^\n|]{0,80}\|\s*(?:sh|bash)\b|\bdownload\b[^.\n]{0,30}\.exe\b|\b(?:visit|go to|click)\b[^.\n]{0,30}\b(?:link|url|site)\b[^.\n]{0,30}https?://"),
    ("exfiltration", 0.45, r"\b(?:add|insert|include|append)\s+(?:a\s+)?(?:backdoor|the following link|this link|hidden link)\b|\bbackdoor\b"),
    ("hidden", 0.3, r"display\s*:\s*none|font-size\s*:\s*0|color\s*:\s*(?:white|#fff(?:fff)?)\b|\bhidden text\b"),
    ("hidden", 0.45, rf"<!--[^>]{{0,300}}\b(?:{AI_N}|system|instructions?)\b[^>]{{0,300}}-->"),
    # --- encoded payloads
    ("encoded", 0.6, r"\b(?:decode|decrypt|translate|convert)\b[^.\n]{0,40}\b(?:and|then)\s+(?:follow|execute|do|obey|run|act on|carry out)\b|\bdo (?:what|as) it says\b"),
    ("encoded", 0.4, r"\b(?:base64|rot13|rot-13|hex|binary|morse|caesar cipher)\b[^.\n]{0,30}\b(?:instructions?|command|follow|execute|obey)\b"),
    # --- other languages
    ("override", 0.9, r"\bignor(?:a|ez|iere|ieren|eer|ar|er)\b[^.\n]{0,30}\b(?:instrucciones|instructions|anweisungen|istruzioni|instruções|instrucoes|instructies|regeln|reglas|règles|regole|regras)\b"),
    ("override", 0.9, r"\bignore\b[^.\n]{0,30}\b(?:instrucciones|anweisungen|istruzioni|instruções|instrucoes|instructies|reglas|règles|regole|regras)\b"),
    ("override", 0.85, r"\b(?:olvida|oublie[zr]?|vergiss|vergessen sie|dimentica|esqueça|esqueca|vergeet)\b[^.\n]{0,30}\b(?:instrucciones|instructions|anweisungen|istruzioni|instruções|instrucoes|instructies|regeln|reglas|règles|regole|regras|todo lo anterior|tout ce qui précède)\b"),
    ("override", 0.9, r"(?:игнорируй|игнорируйте|проигнорируй|забудь|забудьте)[^.\n]{0,40}(?:инструкции|указания|правила|промпт)"),
    ("override", 0.9, r"(?:忽略|无视|忘记|忘掉)[^。\n]{0,12}(?:指令|指示|说明|规则|提示)|(?:指示|命令|ルール)[^。\n]{0,10}(?:無視|忘れ)|무시"),
    ("extraction", 0.8, r"\b(?:muestra|muéstrame|montre|montrez|affiche|zeige|zeig|mostra|mostre|revela|révèle|révélez|rivela|toon)\b[^.\n]{0,30}\b(?:prompt|instrucciones del sistema|instructions système|systemprompt|system-prompt|anweisungen)\b"),
    ("extraction", 0.8, r"(?:системн\w+ промпт|системн\w+ подсказк|系统提示|系统指令|システムプロンプト|시스템 프롬프트)"),
    ("persona", 0.75, r"\b(?:sin|sans|ohne|senza|sem|zonder) (?:ninguna |aucune |jegliche |alcuna |nenhuma )?(?:restricciones|restrictions|einschränkungen|restrizioni|restrições|beperkingen|reglas|regeln|filtros|filtres)\b|без ограничений"),
    ("persona", 0.6, r"\b(?:a partir de ahora|à partir de maintenant|ab jetzt|von nun an|d'ora in poi|de agora em diante)\b[^.\n]{0,40}\b(?:no tienes|tu n'as|du hast keine|non hai|não tem)\b"),
]

# the same key attacks, whitespace-tolerant, for text whose letters were spaced apart
COMPACT_PATTERNS: list[tuple[str, float, str]] = [
    ("override", 0.9, r"(?:ignore|disregard|forget|bypass|override)\s*(?:all|any|the|your|previous|prior|above|of)*\s*(?:previous|prior|above|earlier|system|your)\s*(?:instructions|prompts?|rules|directions|guidelines)"),
    ("extraction", 0.8, r"(?:reveal|print|show|output|repeat)\s*(?:me)?\s*(?:your|the)\s*(?:system|initial|hidden|original|secret)\s*(?:prompt|instructions)"),
    ("persona", 0.8, r"(?:developermode|donothingnow|doanythingnow|jailbr(?:eak|oken)|norestrictions|unrestrictedai|youarenowdan)"),
    ("bypass", 0.75, r"(?:bypass|disable|turnoff)\s*(?:your|the|all)?\s*(?:safety|content)\s*(?:filters|guidelines|restrictions|polic)"),
]

# a sentence that asks or teaches about security, rather than giving an order
EDU_RE = re.compile(
    r"\b(?:how (?:do|does|did|can|could|would|should|to|is|are)|what (?:is|are|was|were|'s|makes|does|do)|what's|why (?:do|does|did|is|are|shouldn't|should|would)"
    r"|explain\w*|describe|definition|define|examples? of|tell me about|learn(?:ing)? about|teach|overview|history of|summari[sz]e the"
    r"|write (?:a|an|the)?\s*(?:\w+\s+)?(?:article|essay|blog|post|paper|report|summary|tutorial|talk|lecture|checklist|policy|test|unit test|guide|outline)"
    r"|is it possible|can you recommend|recommend|research\w*|papers?|protect\w*|prevent\w*|defen[cds]\w*|mitigat\w*|detect\w*|sanitiz\w*|classif\w*"
    r"|secur\w+|threat model|red[- ]?team\w*|best practices|handle such|log and handle|resist\w*|refus\w+ to|asserts?|training|checklist|compare|difference between|is the .{0,30} real"
    r"|(?:is|are) (?:a|an) (?:family|type|kind|class|form|category) of|refers to|in which an? attacker|an attacker|attackers"
    r"|qu[ée] es|qu'est-ce|was ist|cos'?è|o que é|explica\w*|expliqu\w*|erklär\w*|что такое|什么是)\b"
)
SEC_RE = re.compile(
    r"\b(?:prompt injection|injection|jailbreak\w*|attack\w*|exploit\w*|adversarial|red[- ]?team\w*|vulnerab\w*|security|malicious"
    r"|threat\w*|phishing|owasp|guardrail\w*|leak\w*|poison\w*|researchers?|techniques?|attempts?|risk\w*|safety|abuse|hackers?|misuse)\b"
)
QUOTE_RE = re.compile(r"[\"“”«»„]|(?<![a-z])'|'(?![a-z])")
SENT_END_RE = re.compile(r"[.!?。！？]+(?=\s|$)|\n+")


class InjectionOptions(GuardOptions):
    max_chars: int = Field(20_000, ge=100)  # per message; longer text is scanned head + tail
    signals: bool = True  # record which signals fired (names only) in the guard span


class PromptInjection(Guard):
    name: ClassVar[str] = "prompt_injection"
    Options: ClassVar[type[GuardOptions]] = InjectionOptions
    stages: ClassVar[frozenset[str]] = frozenset({"input"})
    actions: ClassVar[frozenset[str]] = frozenset({"block", "flag", "fallback"})
    default_threshold: ClassVar[float] = 0.5
    # direct (user) and indirect (tool/function results, documents in later system messages)
    default_roles: ClassVar[tuple[str, ...]] = ("user", "tool", "function", "system", "developer")

    _compiled: ClassVar[list[tuple[str, float, FastPattern]] | None] = None
    _compact: ClassVar[list[tuple[str, float, FastPattern]] | None] = None

    def __init__(self, options: GuardOptions, stage: Any) -> None:
        super().__init__(options, stage)
        self.max_chars = options.max_chars  # type: ignore[attr-defined]
        self._compile()

    @classmethod
    def _compile(cls) -> None:
        if cls._compiled is None:
            cls._compiled = [(s, w, FastPattern(bounded(p))) for s, w, p in PATTERNS]
            cls._compact = [(s, w, FastPattern(p)) for s, w, p in COMPACT_PATTERNS]

    # ---- scoring ----------------------------------------------------------------------
    def check(self, text: str, ctx: GuardContext | None, role: str) -> Verdict:
        score, signals = self.score(text, role)
        passed = score < (self.threshold or 0.5)
        details: dict[str, Any] = {"signals": signals} if self.options.signals else {}  # type: ignore[attr-defined]
        if role in ("tool", "function", "system", "developer"):
            details["indirect"] = True
        if passed:
            return Verdict(True, score, "", details)
        kinds = ", ".join(sorted(signals)) or "patterns"
        where = "indirect prompt injection in a tool result or document" if details.get("indirect") else "prompt injection / jailbreak attempt"
        return Verdict(False, score, f"possible {where} ({kinds})", details)

    def score(self, text: str, role: str = "user") -> tuple[float, dict[str, float]]:
        if len(text) > self.max_chars:
            half = self.max_chars // 2
            text = text[:half] + "\n" + text[-half:]
        v = views(text)
        best: dict[str, float] = {}
        plain_hits = self._scan(v.plain, self._compiled, best, damp=True)  # type: ignore[arg-type]
        obf: dict[str, float] = {}
        if v.deobfuscated is not None:
            self._scan(v.deobfuscated, self._compiled, obf, damp=True)  # type: ignore[arg-type]
        if v.compact is not None:
            self._scan(v.compact, self._compact, obf, damp=False)  # type: ignore[arg-type]
        for sig, w in obf.items():
            if w > best.get(sig, 0.0):
                best[sig] = w
                best["obfuscation"] = max(best.get("obfuscation", 0.0), 0.4)
        for d in v.decoded:
            dec: dict[str, float] = {}
            self._scan(d, self._compiled, dec, damp=True)  # type: ignore[arg-type]
            if dec:
                for sig, w in dec.items():
                    best[sig] = max(best.get(sig, 0.0), w)
                best["encoded"] = max(best.get("encoded", 0.0), 0.5)
        del plain_hits
        if role in ("tool", "function") or role in ("system", "developer"):
            # data is not supposed to carry instructions at all: boost AI-addressed cues
            for sig in ("addressed_to_ai", "exfiltration", "hidden"):
                if sig in best:
                    best[sig] = min(1.0, best[sig] * 1.2)
        return noisy_or(best.values()), {k: round(w, 3) for k, w in best.items()}

    @staticmethod
    def _scan(text: str, patterns: list[tuple[str, float, FastPattern]], best: dict[str, float],
              damp: bool) -> int:
        hits = 0
        bounds: list[int] | None = None
        message_edu = None
        index = WordIndex(text)
        for sig, w, rx in patterns:
            m = rx.search(text, index)
            if m is None:
                continue
            hits += 1
            if damp:
                if bounds is None:
                    bounds = [0] + [e.end() for e in SENT_END_RE.finditer(text)] + [len(text) + 1]
                    message_edu = bool(EDU_RE.search(text)) and bool(SEC_RE.search(text))
                w *= _damping(text, m, bounds, bool(message_edu))
            if w > best.get(sig, 0.0):
                best[sig] = w
        return hits


def _damping(text: str, m: re.Match[str], bounds: list[int], message_edu: bool) -> float:
    """How much a match counts given where it sits: 1.0 for an order, less inside a
    question or explanation about security, least when also quoted."""
    i = bisect.bisect_right(bounds, m.start()) - 1
    start, end = bounds[i], bounds[min(i + 1, len(bounds) - 1)]
    sentence = text[start:end]
    sentence_edu = bool(EDU_RE.search(sentence)) and (bool(SEC_RE.search(sentence)) or message_edu)
    quoted = len(QUOTE_RE.findall(text, start, m.start())) % 2 == 1
    if sentence_edu and quoted:
        return 0.15
    if sentence_edu:
        return 0.4
    if quoted and message_edu:
        return 0.25
    if quoted:
        return 0.8
    return 1.0
