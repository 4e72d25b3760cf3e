#ifndef RPN_H
#define RPN_H

enum rpn_status {
    RPN_OK = 0,
    RPN_STACK_UNDERFLOW,
    RPN_STACK_OVERFLOW,
    RPN_BAD_TOKEN,
    RPN_DIVISION_BY_ZERO,
    RPN_LEFTOVER_VALUES,
    RPN_EMPTY,
};

/* Evaluates a space-separated expression in reverse Polish notation
 * ("3 4 + 2 *") with + - * / and ^; on RPN_OK stores the result. */
enum rpn_status rpn_eval(const char *expression, double *result);

const char *rpn_status_text(enum rpn_status status);

#endif
