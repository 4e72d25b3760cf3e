#include <math.h>
#include <stdio.h>

#include "rpn.h"

static int failures;

static void expect_value(const char *expression, double expected)
{
    double result = 0;
    enum rpn_status status = rpn_eval(expression, &result);
    if (status != RPN_OK || fabs(result - expected) > 1e-9) {
        printf("FAIL %-24s got %s %g, want %g\n", expression, rpn_status_text(status), result, expected);
        failures++;
    } else {
        printf("ok   %-24s = %g\n", expression, result);
    }
}

static void expect_status(const char *expression, enum rpn_status expected)
{
    double result;
    enum rpn_status status = rpn_eval(expression, &result);
    if (status != expected) {
        printf("FAIL %-24s got \"%s\", want \"%s\"\n", expression, rpn_status_text(status), rpn_status_text(expected));
        failures++;
    } else {
        printf("ok   %-24s -> %s\n", expression, rpn_status_text(status));
    }
}

int main(void)
{
    expect_value("3 4 +", 7);
    expect_value("3 4 + 2 *", 14);
    expect_value("10 4 -", 6);
    expect_value("1 4 /", 0.25);
    expect_value("2 10 ^", 1024);
    expect_value("  -2.5   2 * ", -5);
    expect_status("1 +", RPN_STACK_UNDERFLOW);
    expect_status("1 0 /", RPN_DIVISION_BY_ZERO);
    expect_status("1 2", RPN_LEFTOVER_VALUES);
    expect_status("1 two +", RPN_BAD_TOKEN);
    expect_status("   ", RPN_EMPTY);
    printf("%d failures\n", failures);
    return failures != 0;
}
